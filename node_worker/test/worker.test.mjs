// The real worker process: start-up events, close reporting, prompt exits, command handling.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { rm, openSync, closeSync, readlinkSync, existsSync } from 'node:fs';
import { mkdtemp as mkdtempP, rm as rmP } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkEvent, PROTOCOL_VERSION } from '../src/protocol.mjs';

const WORKER = fileURLToPath(new URL('../src/worker.mjs', import.meta.url));

async function startWorker(env = {}, { extraFds = [] } = {}) {
  const dir = await mkdtempP(join(tmpdir(), 'bsup-worker-'));
  const child = spawn(process.execPath, [WORKER], {
    env: { PATH: process.env.PATH, BSUP_PROTOCOL: '1', BSUP_TENANT: 't1', BSUP_AUTH_DIR: join(dir, 'auth'),
      BSUP_LOG_LEVEL: 'info', BSUP_HEARTBEAT_MS: '200', ...env },
    stdio: ['pipe', 'pipe', 'pipe', ...extraFds],
  });
  const events = [];
  const waiters = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
      const ev = JSON.parse(line); // every stdout line must be protocol JSON, as supervisor/protocol.json describes it
      const problems = checkEvent(ev);
      if (problems.length) throw new Error(`event off the description: ${problems.join('; ')}: ${line}`);
      events.push(ev);
      for (const w of [...waiters]) if (w.pred(ev)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(ev); }
    }
  });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal, at: Date.now() })));
  const waitFor = (pred, ms = 10000) => new Promise((resolve, reject) => {
    const hit = events.find(pred);
    if (hit) return resolve(hit);
    const t = setTimeout(() => reject(new Error(`timeout; events: ${JSON.stringify(events)}`)), ms);
    waiters.push({ pred, resolve: (e) => { clearTimeout(t); resolve(e); } });
  });
  const send = (obj) => child.stdin.write((typeof obj === 'string' ? obj : JSON.stringify(obj)) + '\n');
  const cleanup = () => rmP(dir, { recursive: true, force: true });
  return { child, events, waitFor, send, exited, cleanup, authDir: join(dir, 'auth'), get stderr() { return stderr; } };
}

/** A TCP port that accepts and then says nothing: the WebSocket upgrade never completes. */
async function silentServer() {
  const sockets = [];
  const srv = createServer((s) => sockets.push(s));
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { url: `ws://127.0.0.1:${srv.address().port}/ws/chat`, close: () => { sockets.forEach((s) => s.destroy()); srv.close(); } };
}

async function closedPort() {
  const srv = createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const port = srv.address().port;
  await new Promise((r) => srv.close(r));
  return `ws://127.0.0.1:${port}/ws/chat`;
}

test('closed loopback port: hello, connecting, close 408, exit 0; logs are pino JSON on stderr', async () => {
  const w = await startWorker({ BSUP_WA_URL: await closedPort(), BSUP_SOCKET_OPTIONS: '{"connectTimeoutMs":2000}' });
  const { code } = await w.exited;
  assert.equal(code, 0);
  const types = w.events.map((e) => e.type).filter((t) => t !== 'heartbeat');
  assert.deepEqual(types, ['hello', 'connecting', 'close']);
  const [hello] = w.events;
  assert.equal(hello.protocol, PROTOCOL_VERSION);
  assert.equal(hello.pid, w.child.pid);
  assert.equal(hello.baileys, '7.0.0-rc14');
  assert.ok(Array.isArray(hello.waVersion) && hello.waVersion.length === 3);
  const close = w.events.find((e) => e.type === 'close');
  assert.equal(close.code, 408);
  assert.equal(close.reason, 'timedOut');
  assert.match(close.message, /ECONNREFUSED/);
  for (const line of w.stderr.trim().split('\n')) assert.equal(typeof JSON.parse(line).level, 'number');
  await w.cleanup();
});

for (const [how, act] of [['stdin EOF', (w) => w.child.stdin.end()], ['SIGTERM', (w) => w.child.kill('SIGTERM')],
  ['stop command', (w) => w.send({ cmd: 'stop', id: 's1' })]]) {
  test(`exits within ~1 s on ${how} while connecting`, async () => {
    const srv = await silentServer();
    const w = await startWorker({ BSUP_WA_URL: srv.url, BSUP_SOCKET_OPTIONS: '{"connectTimeoutMs":20000}' });
    await w.waitFor((e) => e.type === 'connecting');
    await w.waitFor((e) => e.type === 'heartbeat');
    const t0 = Date.now();
    act(w);
    const { code, at } = await w.exited;
    srv.close();
    assert.equal(code, 0);
    assert.ok(at - t0 < 1500, `took ${at - t0} ms`);
    if (how === 'stop command') assert.ok(w.events.some((e) => e.type === 'reply' && e.id === 's1' && e.ok));
    await w.cleanup();
  });
}

test('commands: ping, bad JSON, unknown cmd, invalid phone; heartbeat carries RSS; inherited lock fd stays usable', async () => {
  const srv = await silentServer();
  const lockFile = join(tmpdir(), `bsup-lock-${process.pid}`);
  const fd = openSync(lockFile, 'w');
  const w = await startWorker({ BSUP_WA_URL: srv.url, BSUP_LOCK_FD: '3', BSUP_SOCKET_OPTIONS: '{"connectTimeoutMs":20000}' }, { extraFds: [fd] });
  closeSync(fd);
  await w.waitFor((e) => e.type === 'connecting');
  assert.equal(readlinkSync(`/proc/${w.child.pid}/fd/3`), lockFile, 'the worker holds the inherited lock fd');
  w.send({ cmd: 'ping', id: 'a' });
  w.send('this is not json');
  w.send({ cmd: 'dance', id: 'b' });
  w.send({ cmd: 'dance' });
  w.send({ cmd: 'pairing_code', id: 'c', phone: '12' });
  w.send('x'.repeat(70000));
  w.send({ cmd: 'ping', id: 'd' });
  assert.deepEqual((await w.waitFor((e) => e.id === 'a')), { type: 'reply', id: 'a', ok: true, result: {}, ts: w.events.find((e) => e.id === 'a').ts });
  await w.waitFor((e) => e.id === 'd');
  const errs = w.events.filter((e) => e.type === 'error');
  assert.equal(errs.length, 3, JSON.stringify(errs)); // bad JSON, unknown cmd without id, too long
  assert.ok(errs.every((e) => e.code === 'bad_command' && e.fatal === false));
  assert.equal(w.events.find((e) => e.id === 'b').error, 'bad_command');
  assert.equal(w.events.find((e) => e.id === 'c').error, 'bad_command');
  const hb = await w.waitFor((e) => e.type === 'heartbeat');
  assert.ok(hb.rss > 10e6 && hb.uptimeMs > 0);
  w.child.stdin.end();
  assert.equal((await w.exited).code, 0);
  srv.close();
  rm(lockFile, () => {});
  await w.cleanup();
});

test('bad environment: one error line, exit 2', async () => {
  const w = await startWorker({ BSUP_SOCKET_OPTIONS: '{"logger":1}' });
  const { code } = await w.exited;
  assert.equal(code, 2);
  assert.equal(w.events.length, 1);
  assert.equal(w.events[0].code, 'bad_env');
  assert.match(w.events[0].message, /BSUP_SOCKET_OPTIONS/);
  await w.cleanup();
});

test('corrupt creds.json: error auth_corrupt, exit 1, file untouched, no QR', async () => {
  const dir = await mkdtempP(join(tmpdir(), 'bsup-corrupt-'));
  const { mkdirSync, writeFileSync, readFileSync } = await import('node:fs');
  mkdirSync(join(dir, 'auth'));
  writeFileSync(join(dir, 'auth', 'creds.json'), '');
  const w = await startWorker({ BSUP_AUTH_DIR: join(dir, 'auth'), BSUP_WA_URL: await closedPort() });
  const { code } = await w.exited;
  assert.equal(code, 1);
  assert.deepEqual(w.events.map((e) => e.type), ['hello', 'error']);
  assert.equal(w.events[1].code, 'auth_corrupt');
  assert.equal(readFileSync(join(dir, 'auth', 'creds.json'), 'utf8'), '');
  await rmP(dir, { recursive: true });
  await w.cleanup();
});

test('version policy latest without internet falls back to the bundled version quickly', async () => {
  const w = await startWorker({ BSUP_VERSION_POLICY: 'latest', BSUP_WA_URL: await closedPort() });
  const { code } = await w.exited;
  assert.equal(code, 0);
  const hello = w.events.find((e) => e.type === 'hello');
  const { DEFAULT_CONNECTION_CONFIG } = await import('@whiskeysockets/baileys');
  assert.deepEqual(hello.waVersion, DEFAULT_CONNECTION_CONFIG.version);
  assert.match(w.stderr, /bundled/);
  await w.cleanup();
});

test('explicit version policy is passed through', async () => {
  const w = await startWorker({ BSUP_VERSION_POLICY: '2.3000.1000000001', BSUP_WA_URL: await closedPort() });
  await w.exited;
  assert.deepEqual(w.events.find((e) => e.type === 'hello').waVersion, [2, 3000, 1000000001]);
  await w.cleanup();
});

test('standby: hello and heartbeats, no auth dir and no socket until go; go starts the socket; a second go is refused', async () => {
  const srv = await silentServer();
  const w = await startWorker({ BSUP_WA_URL: srv.url, BSUP_STANDBY: '1', BSUP_SOCKET_OPTIONS: '{"connectTimeoutMs":20000}' });
  await w.waitFor((e) => e.type === 'hello');
  await w.waitFor((e) => e.type === 'heartbeat' && e.uptimeMs > 400);
  assert.deepEqual(w.events.map((e) => e.type).filter((t) => t !== 'heartbeat'), ['hello'],
    'a standby opens nothing before go');
  assert.equal(existsSync(w.authDir), false, 'a standby has not touched the auth directory');
  w.send({ cmd: 'go', id: 'g1' });
  await w.waitFor((e) => e.type === 'reply' && e.id === 'g1' && e.ok === true);
  await w.waitFor((e) => e.type === 'connecting');
  assert.equal(existsSync(w.authDir), true, 'after go the worker loads (creates) its auth directory');
  w.send({ cmd: 'go', id: 'g2' });
  const again = await w.waitFor((e) => e.type === 'reply' && e.id === 'g2');
  assert.equal(again.ok, false);
  assert.equal(again.error, 'already_started');
  w.send({ cmd: 'stop' });
  assert.equal((await w.exited).code, 0);
  srv.close();
  await w.cleanup();
});

for (const [how, act] of [['stdin EOF', (w) => w.child.stdin.end()], ['stop command', (w) => w.send({ cmd: 'stop' })],
  ['SIGTERM', (w) => w.child.kill('SIGTERM')]]) {
  test(`standby never promoted exits 0 on ${how} without a close event, auth untouched`, async () => {
    const w = await startWorker({ BSUP_WA_URL: await closedPort(), BSUP_STANDBY: '1' });
    await w.waitFor((e) => e.type === 'hello');
    const t0 = Date.now();
    act(w);
    const { code, at } = await w.exited;
    assert.equal(code, 0);
    assert.ok(at - t0 < 1000, `took ${at - t0} ms`);
    assert.ok(!w.events.some((e) => e.type === 'close' || e.type === 'connecting'));
    assert.equal(existsSync(w.authDir), false);
    await w.cleanup();
  });
}

test('go to a worker that is not a standby is refused; a bad BSUP_STANDBY is a bad environment', async () => {
  const srv = await silentServer();
  const w = await startWorker({ BSUP_WA_URL: srv.url, BSUP_SOCKET_OPTIONS: '{"connectTimeoutMs":20000}' });
  await w.waitFor((e) => e.type === 'connecting');
  w.send({ cmd: 'go', id: 'g' });
  const r = await w.waitFor((e) => e.type === 'reply' && e.id === 'g');
  assert.equal(r.ok, false);
  assert.equal(r.error, 'not_standby');
  w.send({ cmd: 'stop' });
  await w.exited;
  srv.close();
  await w.cleanup();
  const bad = await startWorker({ BSUP_STANDBY: 'yes' });
  assert.equal((await bad.exited).code, 2);
  assert.equal(bad.events[0].code, 'bad_env');
  assert.match(bad.events[0].message, /BSUP_STANDBY/);
  await bad.cleanup();
});
