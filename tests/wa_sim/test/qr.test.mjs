// QR refs rotate on the simulator's clock; only the QR currently shown pairs; running out -> 408.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, openClient, tmpAuthDir } from '../harness.mjs';

const MS = 1200;
let sim;
// Server and client must agree on the ref lifetime: Baileys' qrTimeout sets both its first and
// later QR durations, so the simulator is configured with the same value for both.
before(async () => { sim = await startSim(['--qr-refs', '3', '--qr-first-ms', String(MS), '--qr-next-ms', String(MS)]); });
after(async () => { await sim?.stop(); });

test('a rotated-away QR fails like on a phone; the current one pairs', async () => {
  const c = await openClient({ wsUrl: sim.wsUrl, authDir: tmpAuthDir(), qrTimeout: MS });
  const q1 = await c.waitQr(1);
  const q2 = await c.waitQr(2, 5000);
  assert.notEqual(q1.qr, q2.qr);
  const stale = await sim.scan(q1.qr);
  assert.equal(stale.ok, false);
  assert.equal(stale.status, 409);
  assert.equal(stale.error, 'qr_expired');
  assert.equal((await sim.state()).counters.pairings, 0, 'nothing paired');
  const ok = await sim.scan(q2.qr);
  assert.equal(ok.ok, true);
  assert.equal(ok.refIndex, 1);
  assert.equal((await c.waitClose(5000)).statusCode, 515);
  await c.flush();
});

test('refs running out: the client closes with 408 and nothing paired', async () => {
  const before = (await sim.state()).counters;
  const c = await openClient({ wsUrl: sim.wsUrl, authDir: tmpAuthDir(), qrTimeout: MS });
  const q1 = await c.waitQr(1);
  const closed = await c.waitClose(3 * MS + 3000);
  assert.equal(closed.statusCode, 408);
  assert.equal(c.qrs.length, 3, 'one QR per ref');
  assert.ok(closed.t - q1.t >= 3 * MS - 100, `closed ${closed.t - q1.t} ms after first QR`);
  const after = (await sim.state()).counters;
  assert.equal(after.pairings, before.pairings);
  assert.equal(after.registrations, before.registrations + 1);
  // The last QR is dead too once its socket is gone.
  assert.equal((await sim.scan(c.qrs[2].qr)).error, 'connection_closed');
});

test('config can be read and changed over the control API', async () => {
  const r = await sim.configure({ qrFirstMs: 60000 });
  assert.equal(r.config.qrFirstMs, 60000);
  assert.equal(r.config.qrRefs, 3);
  assert.equal((await sim.configure({ nope: 1 })).error, 'bad_config');
  const reset = await sim.control('POST', '/reset');
  assert.equal(reset.config.qrFirstMs, MS, 'reset goes back to the CLI config');
  assert.equal((await sim.state()).counters.registrations, 0, 'reset clears counters');
});
