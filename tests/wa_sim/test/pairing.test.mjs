// QR -> scan -> 515 -> login with saved creds -> open, with real Baileys, and what the
// simulator's state says about it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startSim, openClient, pairAndLogin, tmpAuthDir, until } from '../harness.mjs';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

test('fresh link: QR, scan, 515, login with saved creds, open', async () => {
  await sim.control('POST', '/reset');
  const r = await pairAndLogin(sim, { scanExtra: { pushName: 'Alice' } });
  assert.equal(r.restartCode, 515, 'Baileys must report 515 restart required after pairing');
  assert.match(r.scan.jid, /^\d+:\d+@s\.whatsapp\.net$/);
  assert.match(r.scan.lid, /^\d+:\d+@lid$/);
  const me = r.client.sock.authState.creds.me;
  assert.equal(me.id, r.scan.jid);
  assert.equal(me.lid, r.scan.lid);
  assert.equal(me.name, 'Alice', 'pushName is delivered through <biz name>');
  await r.client.flush(); // creds writes are not atomic: read only after they finished
  const creds = JSON.parse(fs.readFileSync(path.join(r.authDir, 'creds.json'), 'utf8'));
  assert.equal(creds.me.id, r.scan.jid, 'creds.json holds the paired identity');

  const st = await sim.state();
  assert.equal(st.counters.registrations, 1);
  assert.equal(st.counters.pairings, 1);
  assert.equal(st.counters.logins, 1);
  assert.equal(st.counters.conflicts, 0);
  assert.equal(st.counters.preKeyUploads, 1, 'first login uploads pre-keys (count was 0)');
  const dev = st.devices[r.scan.jid];
  assert.equal(dev.live, 1);
  assert.equal(dev.maxConcurrent, 1);
  assert.equal(dev.preKeys, 812);

  // Re-login with the same creds: no new registration, no pre-key upload.
  await r.client.end();
  const again = await openClient({ wsUrl: sim.wsUrl, authDir: r.authDir });
  await again.waitOpen(10000);
  const st2 = await sim.state();
  assert.equal(st2.counters.registrations, 1);
  assert.equal(st2.counters.logins, 2);
  assert.equal(st2.counters.preKeyUploads, 1);
  assert.equal(st2.devices[r.scan.jid].maxConcurrent, 1);
  await again.end();
  // The client's end() returns when its side is closed; the simulator sees the close a moment later (on a loaded
  // machine, later than one state() round trip): wait for it, bounded.
  await until(async () => (await sim.state()).devices[r.scan.jid].live === 0, 10000, 'the simulator to see the client close');
});

test('scan errors: garbage, unknown ref, QR of a socket that already paired', async () => {
  const bad = await sim.scan('hello');
  assert.equal(bad.status, 400);
  assert.equal(bad.error, 'bad_qr');
  const unknown = await sim.scan(`https://wa.me/settings/linked_devices#2@nope,${'A'.repeat(43)}=,${'A'.repeat(43)}=,${'A'.repeat(43)}=,1`);
  assert.equal(unknown.status, 404);
  assert.equal(unknown.error, 'unknown_ref');

  const authDir = tmpAuthDir();
  const c = await openClient({ wsUrl: sim.wsUrl, authDir });
  const { qr } = await c.waitQr(1);
  const before = (await sim.state()).counters.pairings;
  assert.equal((await sim.scan(qr)).ok, true);
  await c.waitClose(5000);
  const twice = await sim.scan(qr);
  assert.equal(twice.ok, false, 'the same QR must not pair twice');
  assert.ok(['connection_closed', 'already_paired'].includes(twice.error), twice.error);
  assert.equal((await sim.state()).counters.pairings, before + 1);
  await c.flush();
});

test('a login with creds the simulator never paired is refused with 401', async () => {
  const authDir = tmpAuthDir();
  const c = await openClient({ wsUrl: sim.wsUrl, authDir });
  const { qr } = await c.waitQr(1);
  const { jid } = await sim.scan(qr);
  await c.waitClose(5000);
  await c.flush();
  await sim.control('POST', '/reset'); // forget every device: the creds are now unknown
  const again = await openClient({ wsUrl: sim.wsUrl, authDir });
  const closed = await again.waitClose(5000);
  assert.equal(closed.statusCode, 401);
  const st = await sim.state();
  assert.equal(st.counters.loginFailures, 1);
  assert.equal(st.devices[jid], undefined);
});
