// The real worker against the WhatsApp Web simulator (tests/wa_sim): pair, 515, log in, and the `open` event
// carries the server's clock (`serverTime`, from the <success t=...> node) for clock-skew checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkEvent } from '../src/protocol.mjs';

const WORKER = fileURLToPath(new URL('../src/worker.mjs', import.meta.url));
const SIM = fileURLToPath(new URL('../../tests/wa_sim/main.mjs', import.meta.url));
const TRUST = fileURLToPath(new URL('../../tests/wa_sim/trust-test-root.mjs', import.meta.url));

async function startSim() {
  const child = spawn(process.execPath, [SIM, '--port', '0', '--control-port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [line] = await new Promise((resolve) => createInterface({ input: child.stdout }).once('line', (l) => resolve([l])));
  const ready = JSON.parse(line);
  const call = async (method, path, body) => (await fetch(ready.controlUrl + path, {
    method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body) })).json();
  return { ...ready, call, stop: () => new Promise((r) => { child.once('exit', r); child.kill('SIGTERM'); }) };
}

/** Runs one worker until it exits; `onEvent(ev)` sees every protocol event. Resolves with all events. */
function runWorker(authDir, wsUrl, onEvent = () => {}, env = {}) {
  const child = spawn(process.execPath, ['--import', TRUST, WORKER], {
    env: { PATH: process.env.PATH, BSUP_PROTOCOL: '1', BSUP_TENANT: 't1', BSUP_AUTH_DIR: authDir,
      BSUP_WA_URL: wsUrl, BSUP_LOG_LEVEL: 'warn', BSUP_HEARTBEAT_MS: '1000', ...env },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const events = [];
  createInterface({ input: child.stdout }).on('line', (l) => {
    const ev = JSON.parse(l);
    events.push(ev);
    onEvent(ev, child);
  });
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, events })));
}

test('the scan\'s 515: close with reconnecting, then the same process logs in on a new socket', { timeout: 60000 }, async () => {
  const sim = await startSim();
  const dir = await mkdtemp(join(tmpdir(), 'bsup-sim-open-'));
  try {
    let scan;
    const run = await runWorker(join(dir, 'auth'), sim.wsUrl, (ev, child) => {
      if (ev.type === 'qr' && !scan) scan = sim.call('POST', '/scan', { qr: ev.qr, pushName: 'Inproc' });
      if (ev.type === 'open') child.stdin.end();
    });
    const res = await scan;
    assert.equal(res.ok, true);
    const types = run.events.filter((e) => e.type !== 'heartbeat').map((e) => e.type);
    const close = run.events.find((e) => e.type === 'close');
    assert.deepEqual({ code: close.code, reconnecting: close.reconnecting, isNewLogin: close.isNewLogin },
      { code: 515, reconnecting: true, isNewLogin: true });
    // creds durable before the close, then the new socket: connecting and open, one hello (one process)
    const at = types.indexOf('close');
    assert.ok(types.slice(0, at).includes('creds'), types.join(','));
    assert.deepEqual(types.slice(at + 1, at + 2), ['connecting'], types.join(','));
    assert.ok(types.slice(at).includes('open'), types.join(','));
    assert.equal(types.filter((t) => t === 'hello').length, 1);
    assert.equal(run.events.find((e) => e.type === 'open').me.id, res.jid);
    // the ending after stdin EOF is an ordinary one: no second reconnect
    assert.deepEqual(run.events.filter((e) => e.type === 'close').map((e) => [e.code, e.reconnecting ?? false]),
      [[515, true], [null, false]]);
    assert.equal(run.code, 0);
    const state = await sim.call('GET', '/state');
    assert.equal(state.maxConcurrentAnyDevice, 1); // never two sockets at once
    for (const ev of run.events) assert.deepEqual(checkEvent(ev), [], JSON.stringify(ev));
  } finally {
    await sim.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('open carries serverTime (ms) from the success node; close 515 and exit with BSUP_RESTART_IN_PROCESS=off', { timeout: 60000 }, async () => {
  const sim = await startSim();
  const dir = await mkdtemp(join(tmpdir(), 'bsup-sim-open-'));
  try {
    const authDir = join(dir, 'auth');
    let scan;
    const first = await runWorker(authDir, sim.wsUrl, (ev) => {
      if (ev.type === 'qr' && !scan) scan = sim.call('POST', '/scan', { qr: ev.qr, pushName: 'Clock' });
    }, { BSUP_RESTART_IN_PROCESS: 'off' });
    assert.equal((await scan).ok, true);
    assert.equal(first.events.at(-1).type, 'close');
    assert.equal(first.events.at(-1).code, 515);
    assert.equal(first.events.at(-1).reconnecting, undefined);

    const before = Date.now();
    const second = await runWorker(authDir, sim.wsUrl, (ev, child) => { if (ev.type === 'open') child.stdin.end(); });
    const open = second.events.find((e) => e.type === 'open');
    assert.ok(open, JSON.stringify(second.events));
    assert.equal(open.pushName, 'Clock');
    assert.equal(typeof open.serverTime, 'number');
    assert.equal(open.serverTime % 1000, 0); // the server sends whole seconds
    // Same machine: the server clock is ours, to within the second `t` is rounded to.
    assert.ok(open.serverTime >= before - 2000 && open.serverTime <= Date.now() + 1000, String(open.serverTime));
    // successAt: this host's clock when the <success> node was read, after the server stamped it (whole seconds)
    assert.ok(open.successAt >= open.serverTime && open.successAt >= before && open.successAt <= Date.now(),
      JSON.stringify(open));
    // Every line a real pairing and login wrote fits the shared description (supervisor/protocol.json).
    const all = [...first.events, ...second.events];
    for (const ev of all) assert.deepEqual(checkEvent(ev), [], JSON.stringify(ev));
    for (const type of ['hello', 'connecting', 'qr', 'creds', 'close', 'open']) assert.ok(all.some((e) => e.type === type), type);
  } finally {
    await sim.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
