// The worker lease (lease.mjs, the `lease` command): the timer alone, then a real worker process (a standby: no
// auth read, no socket) that exits 3 once its lease passes, lives on while leases keep coming, and has no deadline
// without one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeLease, LEASE_EXPIRED_EXIT } from '../src/lease.mjs';

const WORKER = fileURLToPath(new URL('../src/worker.mjs', import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test('the timer fires once the latest validUntil passed, not before', async () => {
  let fired = 0;
  let at = 0;
  const lease = makeLease({ onExpire: () => { fired += 1; at = Date.now(); } });
  const stopAt = Date.now() + 600;
  let until = 0;
  while (Date.now() < stopAt) { // renewed every 20 ms with 2 s of slack: a loaded machine cannot make it lapse
    until = Date.now() + 2000;
    lease.update(until);
    assert.equal(fired, 0);
    await sleep(20);
  }
  assert.equal(lease.validUntil, until);
  while (!fired && Date.now() < until + 20000) await sleep(20);
  assert.equal(fired, 1);
  assert.ok(at >= until, `fired ${until - at} ms early`);
  await sleep(50);
  assert.equal(fired, 1); // once
});

test('a lease already past expires at the end of the turn; the earlier of the two clocks decides', async () => {
  let fired = 0;
  const past = makeLease({ onExpire: () => { fired += 1; } });
  past.update(Date.now() - 1);
  assert.equal(fired, 0); // the lines read with it, and the I/O of the next turn, are applied first...
  await new Promise(setImmediate);
  await new Promise(setImmediate);
  assert.equal(fired, 1); // ...then the latest lease decides
  let again = 0;
  const renewed = makeLease({ onExpire: () => { again += 1; } });
  renewed.update(Date.now() - 1000);
  renewed.update(Date.now() + 60000); // a renewal read in the same chunk
  await sleep(20);
  assert.equal(again, 0);
  const clocks = { wall: 1000, mono: 0 };
  let n = 0;
  const lease = makeLease({ onExpire: () => { n += 1; }, now: () => clocks.wall, mono: () => clocks.mono });
  lease.update(1030); // 30 ms on both clocks; the timer fires after 30 ms of real time, our clocks have not moved
  await sleep(100);
  assert.equal(n, 0); // re-armed, not fired
  clocks.wall = 900; // the wall clock is stepped back 100 ms...
  clocks.mono = 30; // ...but 30 ms went by: expired all the same
  await sleep(100);
  assert.equal(n, 1);

  const c2 = { wall: 1000, mono: 0 };
  let m = 0;
  const late = makeLease({ onExpire: () => { m += 1; }, now: () => c2.wall, mono: () => c2.mono });
  late.update(1030);
  c2.wall = 1030; // the wall clock reached validUntil (e.g. the lease was read late): no monotonic grace
  await sleep(100);
  assert.equal(m, 1);
});

async function standby() {
  const dir = await mkdtemp(join(tmpdir(), 'bsup-lease-'));
  const child = spawn(process.execPath, [WORKER], {
    env: { PATH: process.env.PATH, BSUP_PROTOCOL: '2', BSUP_TENANT: 't1', BSUP_AUTH_DIR: join(dir, 'auth'),
      BSUP_LOG_LEVEL: 'warn', BSUP_HEARTBEAT_MS: '100', BSUP_STANDBY: '1' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const events = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) { events.push(JSON.parse(buf.slice(0, nl))); buf = buf.slice(nl + 1); }
  });
  child.stderr.resume();
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal, at: Date.now() })));
  const waitFor = async (pred, ms = 30000) => {
    const end = Date.now() + ms;
    while (Date.now() < end) { if (events.some(pred)) return; await sleep(20); }
    throw new Error(`timeout; events: ${JSON.stringify(events)}`);
  };
  const send = (obj) => child.stdin.write(JSON.stringify(obj) + '\n');
  return { child, events, exited, waitFor, send, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

test('a real worker exits 3 when its lease passes, alive while leases keep coming', { timeout: 60000 }, async () => {
  const w = await standby();
  try {
    await w.waitFor((e) => e.type === 'hello');
    w.send({ cmd: 'lease', id: 'l1', validUntil: Date.now() + 3000 });
    await w.waitFor((e) => e.type === 'reply' && e.id === 'l1' && e.ok);
    let until = 0;
    const renewUntil = Date.now() + 1500;
    while (Date.now() < renewUntil) {
      assert.equal(w.child.exitCode, null);
      until = Date.now() + 3000;
      w.send({ cmd: 'lease', validUntil: until }); // fire-and-forget, as the daemon sends them
      await sleep(50);
    }
    const n = w.events.length;
    const { code, at } = await w.exited;
    assert.equal(code, LEASE_EXPIRED_EXIT);
    assert.ok(at >= until, `exited ${until - at} ms before the lease's end`);
    assert.ok(w.events.slice(n).every((e) => e.type === 'heartbeat'), JSON.stringify(w.events.slice(n)));
  } finally {
    w.child.kill('SIGKILL');
    await w.cleanup();
  }
});

test('leases read together: the latest decides, not the oldest (a worker that read its pipe late)', { timeout: 60000 },
  async () => {
    // A worker busy importing Baileys for longer than the lease (seconds at load ~40) reads its first lease, long past,
    // together with the renewals queued behind it: it must not exit on the first (found by
    // tests/cluster/test_partition_workers.py: exit 3 on every start at load 39, the daemon's lease valid throughout).
    const w = await standby();
    try {
      await w.waitFor((e) => e.type === 'hello');
      const now = Date.now();
      w.child.stdin.write(`${JSON.stringify({ cmd: 'lease', validUntil: now - 2000 })}\n`
        + `${JSON.stringify({ cmd: 'lease', validUntil: now - 1000 })}\n`
        + `${JSON.stringify({ cmd: 'lease', validUntil: now + 20000 })}\n${JSON.stringify({ cmd: 'ping', id: 'p1' })}\n`);
      await w.waitFor((e) => e.type === 'reply' && e.id === 'p1');
      await sleep(200);
      assert.equal(w.child.exitCode, null);
      // and a past lease read alone still ends it, without a newer one behind it
      w.send({ cmd: 'lease', validUntil: Date.now() - 1 });
      const { code } = await w.exited;
      assert.equal(code, LEASE_EXPIRED_EXIT);
    } finally {
      w.child.kill('SIGKILL');
      await w.cleanup();
    }
  });

test('a worker whose loop was held past its lease reads the renewals queued meanwhile before deciding', { timeout: 60000 },
  async () => {
    // SIGSTOP stands in for a worker descheduled or busy for longer than its lease while the daemon kept renewing:
    // at SIGCONT its lease timer is due and the renewals wait in the pipe. The timers run before the I/O in Node's
    // loop; the renewals must still be read before the worker decides.
    const w = await standby();
    try {
      await w.waitFor((e) => e.type === 'hello');
      w.send({ cmd: 'lease', id: 'l1', validUntil: Date.now() + 1000 });
      await w.waitFor((e) => e.type === 'reply' && e.id === 'l1');
      w.child.kill('SIGSTOP');
      const stoppedUntil = Date.now() + 2000;
      while (Date.now() < stoppedUntil) {
        w.send({ cmd: 'lease', validUntil: Date.now() + 3000 });
        await sleep(100);
      }
      w.send({ cmd: 'lease', validUntil: Date.now() + 20000 });
      w.child.kill('SIGCONT');
      w.send({ cmd: 'ping', id: 'p2' });
      await Promise.race([w.waitFor((e) => e.type === 'reply' && e.id === 'p2'),
        w.exited.then(({ code, signal }) => { throw new Error(`worker exited ${code ?? signal}`); })]);
      assert.equal(w.child.exitCode, null);
    } finally {
      w.child.kill('SIGKILL');
      await w.cleanup();
    }
  });

test('no lease, no deadline (single-host mode)', { timeout: 60000 }, async () => {
  const w = await standby();
  try {
    await w.waitFor((e) => e.type === 'hello');
    // 20 heartbeats (2 s) after hello, more than the 1.5 s leases above: still alive
    await w.waitFor(() => w.events.filter((e) => e.type === 'heartbeat').length >= 20);
    assert.equal(w.child.exitCode, null);
    w.child.stdin.end();
    assert.equal((await w.exited).code, 0);
  } finally {
    w.child.kill('SIGKILL');
    await w.cleanup();
  }
});
