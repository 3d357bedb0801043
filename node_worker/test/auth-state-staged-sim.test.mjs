// The staged pre-key files through the real worker and Baileys against the simulator: a scan that comes a while
// after the QR logs in with the pre-key files the QR worker staged (renamed, not created), uploads all 812, and
// leaves no staged file behind; with BSUP_PREKEY_STAGE=off none are used.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const WORKER = fileURLToPath(new URL('../src/worker.mjs', import.meta.url));
const SIM = fileURLToPath(new URL('../../tests/wa_sim/main.mjs', import.meta.url));
const TRUST = fileURLToPath(new URL('../../tests/wa_sim/trust-test-root.mjs', import.meta.url));

async function startSim() {
  const child = spawn(process.execPath, [SIM, '--port', '0', '--control-port', '0'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const ready = JSON.parse(await new Promise((r) => createInterface({ input: child.stdout }).once('line', r)));
  const call = async (method, path, body) => (await fetch(ready.controlUrl + path, {
    method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body) })).json();
  return { ...ready, call, stop: () => new Promise((r) => { child.once('exit', r); child.kill('SIGTERM'); }) };
}

/** One pairing, scanned `delayMs` after the QR; resolves with the `staged` count the worker logged at open. */
async function pairOnce(sim, authDir, delayMs, env = {}) {
  const child = spawn(process.execPath, ['--import', TRUST, WORKER], {
    env: { PATH: process.env.PATH, BSUP_PROTOCOL: '2', BSUP_TENANT: 't1', BSUP_AUTH_DIR: authDir,
      BSUP_WA_URL: sim.wsUrl, BSUP_LOG_LEVEL: 'debug', BSUP_HEARTBEAT_MS: '60000', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let staged = null;
  createInterface({ input: child.stderr }).on('line', (l) => {
    try {
      const j = JSON.parse(l);
      if (j.msg === 'pre-key files staged during the QR, used') staged = j.staged;
    } catch { /* not JSON */ }
  });
  let scan = null;
  createInterface({ input: child.stdout }).on('line', (l) => {
    const ev = JSON.parse(l);
    if (ev.type === 'qr' && !scan) {
      scan = new Promise((r) => setTimeout(r, delayMs)).then(() => sim.call('POST', '/scan', { qr: ev.qr }));
    }
    if (ev.type === 'open') child.stdin.end();
  });
  const code = await new Promise((r) => child.once('exit', r));
  assert.equal(code, 0);
  assert.equal((await scan).ok, true);
  return staged;
}

test('a scan after the QR: the login renames the staged pre-key files; none left over; off: none used', { timeout: 90000 }, async () => {
  const sim = await startSim();
  const dir = await mkdtemp(join(tmpdir(), 'bsup-staged-sim-'));
  try {
    const on = join(dir, 'on');
    // 2 s: the pool makes and stages 812 pairs in well under that on an idle machine; loaded, fewer may be ready
    const staged = await pairOnce(sim, on, 2000);
    assert.ok(staged > 100, `staged files used: ${staged}`);
    const names = await readdir(on);
    assert.equal(names.filter((n) => /^pre-key-\d+\.json$/.test(n)).length, 812);
    assert.deepEqual(names.filter((n) => n.startsWith('.')), []); // nothing staged left behind
    const off = join(dir, 'off');
    assert.equal(await pairOnce(sim, off, 2000, { BSUP_PREKEY_STAGE: 'off' }), 0);
    assert.equal((await readdir(off)).filter((n) => /^pre-key-\d+\.json$/.test(n)).length, 812);
    const state = await sim.call('GET', '/state');
    assert.equal(state.maxConcurrentAnyDevice, 1);
  } finally {
    await sim.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
