// Faults injected on the next connection, and what Baileys reports.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, openClient, pairAndLogin } from '../harness.mjs';

const CLIENT = { keepAliveIntervalMs: 2000, connectTimeoutMs: 2000 };
let sim, authDir;
before(async () => {
  sim = await startSim();
  const r = await pairAndLogin(sim, CLIENT);
  authDir = r.authDir;
  await r.client.end();
});
after(async () => { await sim?.stop(); });

const CASES = [
  ['refuse', {}, 408, 1000],
  ['stall_handshake', {}, 408, 2500], // connectTimeoutMs
  ['tcp_drop_after_handshake', {}, 428, 1000],
  ['stream_error', { code: 503 }, 503, 1000],
  ['login_failure', { code: 500 }, 500, 1000]
];
for (const [fault, extra, code, maxMs] of CASES) {
  test(`fault ${fault} -> ${code}, and the connection after it is normal`, async () => {
    const f = await sim.fault(fault, extra);
    assert.equal(f.pendingFaults.length, 1);
    const c = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
    const closed = await c.waitClose(10000);
    assert.equal(closed.statusCode, code);
    assert.ok(closed.t - c.t0 <= maxMs, `${fault} took ${closed.t - c.t0} ms`);
    await c.flush();
    const st = await sim.state();
    assert.equal(st.counters.faultsApplied[fault], 1);
    assert.equal(st.pendingFaults.length, 0, 'a fault applies to one connection only');
    const ok = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
    await ok.waitOpen(10000);
    await ok.end();
  });
}

test('a non-/ws/chat path is dropped at TCP level (never an HTTP error, which hangs Baileys)', async () => {
  const c = await openClient({ wsUrl: sim.wsUrl.replace('/ws/chat', '/other'), authDir, ...CLIENT });
  assert.equal((await c.waitClose(5000)).statusCode, 408);
  await c.flush();
});
