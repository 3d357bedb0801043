// Messages, step 2: a simulated contact (its own Signal identity, built from Baileys' own code)
// encrypts texts to a tenant (pkmsg until the tenant replies), in the stanza the server sends. Real
// Baileys decrypts them (messages.upsert with the text) and its receipt reaches the simulator.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, pairAndLogin, MESSAGING_CLIENT as CLIENT } from '../harness.mjs';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

test('a contact sends two texts: both pkmsg (no reply yet), both upserted with the text, both receipted', async () => {
  const r = await pairAndLogin(sim, CLIENT);
  const c = await sim.newContact({ pushName: 'Bob' });
  assert.equal(c.ok, true, JSON.stringify(c));
  assert.match(c.lid, /^\d+@lid$/);

  const first = await sim.contactSend(c.phone, r.scan.jid, 'hello from Bob');
  assert.equal(first.ok, true, JSON.stringify(first));
  assert.deepEqual(first.devices.map(d => [d.jid, d.type]), [[r.scan.jid, 'pkmsg']]);
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === first.id), 10000, 'first upsert');
  const second = await sim.contactSend(c.phone, r.scan.jid, 'second one');
  // Signal keeps sending pkmsg (same pre-key) until the peer replies; msg after a reply is
  // covered in messages_out.test.mjs.
  assert.equal(second.devices[0].type, 'pkmsg');
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === second.id), 10000, 'second upsert');

  const got = r.client.upserts.filter(u => [first.id, second.id].includes(u.key.id));
  assert.deepEqual(got.map(u => [u.text, u.type, u.key.fromMe, u.key.remoteJid, u.stub]), [
    ['hello from Bob', 'notify', false, c.jid, null],
    ['second one', 'notify', false, c.jid, null]
  ]);
  // The receipt is Baileys' ack: the queue is empty and the contact saw both delivered.
  const waitDelivered = async () => {
    for (let i = 0; i < 100; i++) {
      const inbox = await sim.inbox(c.phone);
      if (inbox.receiptsIn.length === 2) return inbox;
      await new Promise(res => setTimeout(res, 50));
    }
    throw new Error('receipts did not reach the contact');
  };
  const inbox = await waitDelivered();
  assert.deepEqual(inbox.receiptsIn.map(x => x.id), [first.id, second.id]);
  const dev = (await sim.state()).devices[r.scan.jid];
  assert.equal(dev.queue.length, 0);
  assert.equal(Object.values(dev.stats.receipts).reduce((a, b) => a + b, 0), 2);
  assert.deepEqual(dev.stats.errorAcks, {});
  assert.equal(dev.bundle.preKeysHandedOut, 1, 'the pkmsg used one of the device\'s one-time pre-keys');
  await r.client.end();
});

test('LID addressing: from=LID@lid with sender_pn decrypts too', async () => {
  const r = await pairAndLogin(sim, CLIENT);
  const c = await sim.newContact();
  const sent = await sim.contactSend(c.phone, r.scan.jid, 'via lid', { addressing: 'lid' });
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === sent.id), 10000, 'upsert');
  const u = r.client.upserts.find(x => x.key.id === sent.id);
  assert.equal(u.text, 'via lid');
  assert.equal(u.key.remoteJid, c.lid);
  assert.equal(u.key.remoteJidAlt, c.jid);
  await r.client.end();
});

test('bad input is a clear 4xx', async () => {
  assert.equal((await sim.contactSend('999', '1', 'x')).error, 'unknown_contact');
  const c = await sim.newContact();
  assert.equal((await sim.contactSend(c.phone, 'nobody', 'x')).status, 404);
  assert.equal((await sim.contactSend(c.phone, 'nobody', '')).status, 400);
  assert.equal((await sim.newContact({ phone: c.phone })).status, 409);
});
