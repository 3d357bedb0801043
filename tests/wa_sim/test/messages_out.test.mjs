// Messages, step 4: sends from the tenant. usync with LIDs, the contact's pre-key bundle, the
// server's ack; the contact decrypts the exact text (its inbox is the proof: sendMessage resolves
// even when nothing was delivered) and answers with delivery / read / retry receipts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, pairAndLogin, until, MESSAGING_CLIENT as CLIENT } from '../harness.mjs';

let sim, r;
before(async () => {
  sim = await startSim();
  r = await pairAndLogin(sim, CLIENT);
});
after(async () => { await r?.client.end(); await sim?.stop(); });

const inboxWith = (phone, pred, what) => until(async () => {
  const box = await sim.inbox(phone);
  return box.messages.filter(pred).length ? box : null;
}, 10000, what);

test('tenant -> contact: usync with LID, key fetch, pkmsg; the contact decrypts the exact text; server ack', async () => {
  const c = await sim.newContact({ pushName: 'Carol' });
  const since = (await sim.state()).lastEventSeq;
  const sent = await r.client.sock.sendMessage(c.jid, { text: 'hi Carol, ünïcode ✓' });
  const box = await inboxWith(c.phone, m => m.id === sent.key.id, 'the contact to decrypt');
  const m = box.messages.find(x => x.id === sent.key.id);
  assert.equal(m.text, 'hi Carol, ünïcode ✓');
  assert.equal(m.type, 'pkmsg');
  assert.equal(m.from, r.scan.jid);
  assert.equal(m.error, undefined);
  const evs = await sim.events(since);
  assert.ok(evs.some(e => e.type === 'usync_user' && e.jid === c.jid && e.found && e.protocols.includes('lid')), 'usync asked for devices + lid');
  assert.ok(evs.some(e => e.type === 'keys_fetched' && e.jid.startsWith(c.lidUser ?? c.lid.split('@')[0]) && e.found), 'bundle fetched by LID');
  const tm = evs.find(e => e.type === 'tenant_message' && e.id === sent.key.id);
  assert.deepEqual(tm.delivered, [{ contact: c.phone, type: 'pkmsg', ok: true }]);
  assert.equal((await sim.state()).contacts.find(x => x.phone === c.phone).preKeysLeft, 49, 'one contact pre-key used');

  // Until the contact answers, the tenant keeps the pre-key header (Signal, PROTOCOL.md §6).
  const again = await r.client.sock.sendMessage(c.jid, { text: 'second' });
  await inboxWith(c.phone, x => x.id === again.key.id, 'second');
  // The contact answers on the session the tenant started: msg; after that the tenant sends msg.
  const back = await sim.contactSend(c.phone, r.scan.jid, 'thanks');
  assert.equal(back.devices[0].type, 'msg');
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === back.id && u.text === 'thanks'), 10000, 'reply upsert');
  const third = await r.client.sock.sendMessage(c.jid, { text: 'third' });
  const box3 = await inboxWith(c.phone, x => x.id === third.key.id, 'third');
  assert.deepEqual(box3.messages.map(x => [x.text, x.type]), [['hi Carol, ünïcode ✓', 'pkmsg'], ['second', 'pkmsg'], ['third', 'msg']]);
});

test('contact starts (pkmsg), tenant replies, then the contact sends msg', async () => {
  const c = await sim.newContact();
  const first = await sim.contactSend(c.phone, r.scan.jid, 'hi tenant');
  assert.equal(first.devices[0].type, 'pkmsg');
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === first.id), 10000, 'upsert');
  const reply = await r.client.sock.sendMessage(c.jid, { text: 'hi contact' });
  const box = await inboxWith(c.phone, x => x.id === reply.key.id, 'reply');
  // Baileys' first send to a user fetches its devices; a newly learnt LID makes it re-fetch the
  // keys (reason=identity) and start a fresh session: a pkmsg even though one existed.
  assert.deepEqual(box.messages.map(x => [x.text, x.type, x.error]), [['hi contact', 'pkmsg', undefined]]);
  const next = await sim.contactSend(c.phone, r.scan.jid, 'and again');
  assert.equal(next.devices[0].type, 'msg');
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === next.id && u.text === 'and again'), 10000, 'msg upsert');
});

test('delivery and read receipts from the contact become messages.update 3 then 4', async () => {
  const c = await sim.newContact();
  const sent = await r.client.sock.sendMessage(c.jid, { text: 'read me' });
  await inboxWith(c.phone, m => m.id === sent.key.id, 'decrypt');
  // Receipts within ~100 ms of the send are merged into Baileys' buffered upsert (PROTOCOL.md §6);
  // wait for our own upsert so each receipt gets its own messages.update.
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === sent.key.id), 10000, 'own upsert');
  assert.equal((await sim.contactReceipt(c.phone, sent.key.id, 'delivery')).ok, true);
  await r.client.waitFor(x => x.statusUpdates.some(u => u.id === sent.key.id && u.status === 3), 10000, 'delivered');
  assert.equal((await sim.contactReceipt(c.phone, sent.key.id, 'read')).ok, true);
  await r.client.waitFor(x => x.statusUpdates.some(u => u.id === sent.key.id && u.status === 4), 10000, 'read');
  // Baileys acked both receipts (<ack class=receipt>): nothing left in the device's queue.
  await until(async () => (await sim.state()).devices[r.scan.jid].queue.length === 0, 5000, 'receipts acked');
  assert.equal((await sim.contactReceipt(c.phone, 'nope', 'read')).status, 404);
  assert.equal((await sim.contactReceipt(c.phone, sent.key.id, 'seen')).status, 400);
});

test('a retry receipt with fresh keys: Baileys sends the same message again and the contact decrypts it', async () => {
  const c = await sim.newContact();
  const sent = await r.client.sock.sendMessage(c.jid, { text: 'please retry' });
  await inboxWith(c.phone, m => m.id === sent.key.id, 'first copy');
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === sent.key.id), 10000, 'own upsert');
  assert.equal((await sim.contactReceipt(c.phone, sent.key.id, 'retry')).ok, true);
  // The retry comes from device 0 (no device in `from`), so Baileys re-sends to all devices,
  // same id, on a session built from the keys in the receipt: a pkmsg again.
  const box = await until(async () => {
    const b = await sim.inbox(c.phone);
    return b.messages.filter(m => m.id === sent.key.id).length === 2 && b;
  }, 10000, 'the resend');
  const copies = box.messages.filter(m => m.id === sent.key.id);
  assert.deepEqual(copies.map(m => [m.text, m.type, m.error]), [['please retry', 'pkmsg', undefined], ['please retry', 'pkmsg', undefined]]);
});

test('a number without WhatsApp: zero devices; sendMessage still resolves with nothing delivered', async () => {
  const since = (await sim.state()).lastEventSeq;
  const before = (await sim.state()).counters.sendsToNobody;
  const sent = await r.client.sock.sendMessage('19995550000@s.whatsapp.net', { text: 'anyone?' });
  assert.ok(sent.key.id, 'Baileys resolves the send');
  const tm = await until(async () => (await sim.events(since)).find(e => e.type === 'tenant_message' && e.id === sent.key.id), 10000, 'stanza');
  assert.equal(tm.reached, 0);
  assert.deepEqual(tm.delivered, []);
  assert.equal(tm.copies.length, 1, 'only the copy for its own phone');
  assert.equal((await sim.state()).counters.sendsToNobody, before + 1);
  const u = (await sim.events(since)).find(e => e.type === 'usync_user' && e.jid === '19995550000@s.whatsapp.net');
  assert.equal(u.found, false);
});

test('the server refuses a send (<ack error=479>): Baileys reports status ERROR, the contact gets nothing', async () => {
  const c = await sim.newContact();
  const rej = await sim.control('POST', '/sends/reject', { error: '479' });
  assert.deepEqual(rej.rejectNext, ['479']);
  const since = (await sim.state()).lastEventSeq;
  const sent = await r.client.sock.sendMessage(c.jid, { text: 'refused' });
  const rejected = await until(async () => (await sim.events(since)).find(e => e.type === 'tenant_message_rejected'), 10000, 'reject');
  assert.equal(rejected.id, sent.key.id);
  // An error ack within ~100 ms of the send is merged into Baileys' buffered upsert of the sent
  // message (status 0 there) instead of a messages.update (PROTOCOL.md §6): accept either.
  await r.client.waitFor(x => x.statusUpdates.some(u => u.id === sent.key.id && u.status === 0) ||
    x.upserts.some(u => u.key.id === sent.key.id && u.status === 0), 10000, 'status ERROR');
  const ok = await r.client.sock.sendMessage(c.jid, { text: 'accepted' });
  const box = await inboxWith(c.phone, m => m.id === ok.key.id, 'the next send');
  assert.deepEqual(box.messages.map(m => m.text), ['accepted'], 'the refused one never reached the contact');
  assert.equal((await sim.control('POST', '/sends/reject', { error: 'x' })).status, 400);
});
