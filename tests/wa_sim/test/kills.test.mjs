// Every kill variant against a logged-in real Baileys client, and the statusCode it reports
// (PROTOCOL.md §5). After each non-401 kill the same creds log in again without a re-scan.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, openClient, pairAndLogin } from '../harness.mjs';

const CLIENT = { keepAliveIntervalMs: 2000 };
let sim, client, authDir, jid;
before(async () => {
  sim = await startSim();
  const r = await pairAndLogin(sim, CLIENT);
  ({ client, authDir } = r);
  jid = r.scan.jid;
});
after(async () => { await client?.end(); await sim?.stop(); });

const EXPECTED = { 500: 500, 503: 503, 515: 515, stream_end: 428, tcp_drop: 428, ws_close: 428, 440: 440 };
for (const [variant, code] of Object.entries(EXPECTED)) {
  test(`kill ${variant} -> Baileys reports ${code}, then re-login with the same creds`, async () => {
    const before = await sim.state();
    const k = await sim.kill(jid, variant);
    assert.equal(k.ok, true);
    const closed = await client.waitClose(5000);
    assert.equal(closed.statusCode, code);
    await client.flush();
    client = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
    await client.waitOpen(10000);
    const st = await sim.state();
    assert.equal(st.counters.registrations, before.counters.registrations, 'no re-registration');
    assert.equal(st.counters.kills[variant], (before.counters.kills[variant] ?? 0) + 1);
    assert.equal(st.devices[jid].live, 1);
    if (variant === '440') assert.equal(st.counters.conflicts, before.counters.conflicts + 1, '440 is counted');
  });
}

test('silent -> 408 after keepAlive + 5 s', async () => {
  const t = Date.now();
  await sim.kill(jid, 'silent');
  const closed = await client.waitClose(15000);
  assert.equal(closed.statusCode, 408);
  assert.ok(closed.t - t >= 5000, `closed after ${closed.t - t} ms, expected > 5 s`);
  await client.flush();
  client = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
  await client.waitOpen(10000);
});

test('a second live connection for the device replaces the first (440) and is counted', async () => {
  const before = await sim.state();
  const dup = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
  await dup.waitOpen(10000);
  const closed = await client.waitClose(5000);
  assert.equal(closed.statusCode, 440);
  const st = await sim.state();
  assert.equal(st.counters.conflictsFromDuplicates, before.counters.conflictsFromDuplicates + 1);
  assert.equal(st.devices[jid].maxConcurrent, 2, 'the overlap is visible');
  assert.equal(st.maxConcurrentAnyDevice, 2);
  assert.equal(st.devices[jid].live, 1);
  client = dup;
});

test('unknown device / bad variant / no live connection are JSON errors', async () => {
  assert.equal((await sim.kill('999:9', '500')).error, 'unknown_device');
  const bad = await sim.kill(jid, 'nope');
  assert.equal(bad.status, 400);
  assert.equal(bad.error, 'bad_variant');
});

test('401 logs the device out for good; device_removed does too', async () => {
  await sim.kill(jid, '401');
  assert.equal((await client.waitClose(5000)).statusCode, 401);
  await client.flush();
  const again = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
  assert.equal((await again.waitClose(5000)).statusCode, 401, 'creds of a logged-out device are refused');
  assert.equal((await sim.state()).devices[jid].removed, true);
  assert.equal((await sim.kill(jid, '500')).error, 'no_live_connection');

  const r = await pairAndLogin(sim, CLIENT);
  await sim.kill(r.scan.jid, 'device_removed');
  const closed = await r.client.waitClose(5000);
  assert.equal(closed.statusCode, 401);
  assert.match(closed.message, /conflict/);
  await r.client.flush();
  client = null;
});
