// Messages, step 5: the control routes around messaging, their counts, and their 4xx answers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, pairAndLogin, until, MESSAGING_CLIENT as CLIENT } from '../harness.mjs';

let sim, r;
before(async () => {
  sim = await startSim();
  r = await pairAndLogin(sim, CLIENT);
});
after(async () => { await r?.client.end(); await sim?.stop(); });

test('the tenant reads a message: the contact gets the delivery and the read receipt; /mailbox counts them', async () => {
  const c = await sim.newContact();
  const sent = await sim.contactSend(c.phone, r.scan.jid, 'read this');
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === sent.id), 10000, 'upsert');
  const key = r.client.upserts.find(u => u.key.id === sent.id).key;
  await r.client.sock.readMessages([key]);
  const box = await until(async () => {
    const b = await sim.inbox(c.phone);
    return b.receiptsIn.some(x => x.id === sent.id && x.type === 'read') && b;
  }, 10000, 'read receipt');
  assert.deepEqual(box.receiptsIn.filter(x => x.id === sent.id).map(x => [x.type, x.from]),
    [['inactive', r.scan.jid], ['read', r.scan.jid]]);
  const mb = await sim.control('GET', '/mailbox');
  assert.equal(mb.ok, true);
  assert.deepEqual(mb.devices[r.scan.jid].stats.receipts, { inactive: 1, read: 1 });
  assert.deepEqual(mb.devices[r.scan.jid].queue, []);
});

test('number lookup (onWhatsApp): a contact exists, an unknown number does not', async () => {
  const c = await sim.newContact();
  const found = await r.client.sock.onWhatsApp(c.phone, '19995550001');
  assert.deepEqual(found, [{ jid: c.jid, exists: true }]);
});

test('hold/release with nobody waiting; config offlineHoldMs is validated', async () => {
  assert.deepEqual(await sim.control('POST', '/offline/hold'), { status: 200, ok: true, held: true, waiting: 0 });
  assert.equal((await sim.state()).offlineHeld, true);
  assert.deepEqual(await sim.control('POST', '/offline/release'), { status: 200, ok: true, held: false, released: 0 });
  assert.equal((await sim.configure({ offlineHoldMs: -1 })).status, 400);
});

test('bad input: clear JSON 4xx', async () => {
  const c = await sim.newContact();
  const cases = [
    [await sim.control('GET', '/contacts/inbox'), 400, 'bad_request'],
    [await sim.inbox('123456'), 404, 'unknown_contact'],
    [await sim.newContact({ phone: 'abc' }), 400, 'bad_request'],
    [await sim.contactSend(c.phone, r.scan.jid, 'x', { addressing: 'smoke' }), 400, 'bad_request'],
    [await sim.contactSend(c.phone, r.scan.jid, 42), 400, 'bad_request'],
    [await sim.control('POST', '/receipts/drop', { jid: '1@s.whatsapp.net' }), 404, 'unknown_device'],
    [await sim.control('POST', '/receipts/drop', { count: 0 }), 400, 'bad_request'],
    [await sim.contactReceipt('123456', 'x', 'read'), 404, 'unknown_contact']
  ];
  for (const [res, status, error] of cases) {
    assert.equal(res.status, status, JSON.stringify(res));
    assert.equal(res.ok, false);
    assert.equal(res.error, error, JSON.stringify(res));
    assert.equal(typeof res.message, 'string');
  }
});

test('a device that never uploaded keys cannot be written to: 409 no_keys', async () => {
  await sim.configure({ preKeysOnNewDevice: 100 }); // count > 5: Baileys uploads nothing
  try {
    const other = await pairAndLogin(sim, CLIENT);
    const c = await sim.newContact();
    const res = await sim.contactSend(c.phone, other.scan.jid, 'x');
    assert.equal(res.status, 409);
    assert.equal(res.error, 'no_keys');
    await other.client.end();
  } finally {
    await sim.configure({ preKeysOnNewDevice: 0 });
  }
});
