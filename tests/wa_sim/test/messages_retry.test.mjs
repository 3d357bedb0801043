// A contact's automatic retry receipts (retry.mjs): it cannot decrypt a tenant's message, asks
// for it again like a WhatsApp client, and Baileys resends the same id on a fresh session.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, openClient, pairAndLogin, until, MESSAGING_CLIENT as CLIENT } from '../harness.mjs';

let sim, r;
before(async () => {
  sim = await startSim();
  r = await pairAndLogin(sim, CLIENT);
});
after(async () => { await r?.client.end(); await sim?.stop(); });

const copiesOf = (phone, id, n, what) => until(async () => {
  const got = (await sim.inbox(phone)).messages.filter(m => m.id === id);
  return got.length >= n ? got : null;
}, 15000, what);

/** A contact with an established session: the tenant's pkmsg decrypted, the contact's reply read, so the tenant's
 * next message is a plain msg on that session. */
async function withSession() {
  const c = await sim.newContact();
  const first = await r.client.sock.sendMessage(c.jid, { text: 'hello' });
  await copiesOf(c.phone, first.key.id, 1, 'the first message');
  const reply = await sim.contactSend(c.phone, r.scan.jid, 'hi back');
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === reply.id), 10000, 'the reply upserted');
  return c;
}

test('a message the contact has no session for: a retry receipt with keys, the resend decrypts', async () => {
  const c = await withSession();
  assert.equal((await sim.control('POST', '/contacts/forget', { contact: c.phone, to: r.scan.jid })).ok, true);
  const since = (await sim.state()).lastEventSeq;
  const sent = await r.client.sock.sendMessage(c.jid, { text: 'lost session' });
  const got = await copiesOf(c.phone, sent.key.id, 2, 'the resend after the retry receipt');
  // The first copy was a msg on the session the contact forgot; the resend a pkmsg on its fresh keys.
  assert.deepEqual(got.map(m => [m.type, m.text ?? null, m.error ?? null, m.retried ?? null]),
    [['msg', null, 'No session record', 1], ['pkmsg', 'lost session', null, null]]);
  const evs = (await sim.events(since)).filter(e => e.type === 'contact_retry_receipt');
  assert.deepEqual(evs.map(e => [e.id, e.count, e.keys]), [[sent.key.id, 1, true]]);
  assert.equal((await sim.state()).counters.contactRetryReceipts, 1);
  // Baileys acked the receipt: nothing left queued for the device.
  await until(async () => (await sim.state()).devices[r.scan.jid].queue.length === 0, 10000, 'receipt acked');
});

test('contactRetries 0: the failure is recorded, no retry receipt, no resend', async () => {
  assert.equal((await sim.configure({ contactRetries: 0 })).ok, true);
  try {
    const c = await withSession();
    await sim.control('POST', '/contacts/forget', { contact: c.phone, to: r.scan.jid });
    const before = (await sim.state()).counters;
    const sent = await r.client.sock.sendMessage(c.jid, { text: 'not asked again' });
    const got = await copiesOf(c.phone, sent.key.id, 1, 'the failed copy');
    assert.deepEqual(got.map(m => [m.type, m.error]), [['msg', 'No session record']]);
    // A later message arrives (on the same broken session: it fails too) with no resend before it.
    const next = await r.client.sock.sendMessage(c.jid, { text: 'next' });
    await copiesOf(c.phone, next.key.id, 1, 'the next message');
    assert.equal((await sim.inbox(c.phone)).messages.filter(m => m.id === sent.key.id).length, 1);
    assert.equal((await sim.state()).counters.contactRetryReceipts, before.contactRetryReceipts);
  } finally {
    await sim.configure({ contactRetries: 3 });
  }
});

test('forget: bad input is a JSON 4xx', async () => {
  assert.equal((await sim.control('POST', '/contacts/forget', { contact: '999', to: r.scan.jid })).status, 404);
  const c = await sim.newContact();
  const res = await sim.control('POST', '/contacts/forget', { contact: c.phone });
  assert.deepEqual([res.status, res.error], [400, 'bad_request']);
});

test('contactResends 1: a tenant that cannot decrypt (a replay after a lost receipt) asks again and gets the text', async () => {
  assert.equal((await sim.configure({ contactResends: 1 })).ok, true);
  const t = await pairAndLogin(sim, CLIENT); // its own tenant: the replay needs a reconnect
  try {
    const jid = t.scan.jid;
    const c = await sim.newContact();
    const hello = await t.client.sock.sendMessage(c.jid, { text: 'hello' });
    await copiesOf(c.phone, hello.key.id, 1, 'hello decrypted');
    await sim.control('POST', '/receipts/drop', { jid });
    const sent = await sim.contactSend(c.phone, jid, 'say it again');
    assert.equal(sent.devices[0].type, 'msg');
    await t.client.waitFor(x => x.upserts.some(u => u.key.id === sent.id && u.text), 10000, 'live upsert');
    await until(async () => (await sim.state()).devices[jid].stats.receiptsDropped === 1, 5000, 'dropped receipt');
    await t.client.end();
    const since = (await sim.state()).lastEventSeq;
    // The replay fails (its message key is used up): Baileys sends a retry receipt; the contact resends
    // on a fresh session from the device's bundle (a pkmsg), and Baileys upserts the text again.
    const again = await openClient({ wsUrl: sim.wsUrl, authDir: t.authDir, ...CLIENT });
    try {
      await again.waitFor(x => x.upserts.some(u => u.key.id === sent.id && u.text === 'say it again'), 15000, 'the resend');
      const evs = (await sim.events(since)).filter(e => e.type === 'contact_resent');
      assert.deepEqual(evs.map(e => [e.id, e.enc, e.to]), [[sent.id, 'pkmsg', jid]]);
    } finally {
      await again.end();
    }
  } finally {
    await sim.configure({ contactResends: 0 });
  }
});

test('corrupt: the tenant cannot decrypt (Bad MAC), sends a retry receipt and upserts the resend', async () => {
  assert.equal((await sim.configure({ contactResends: 1 })).ok, true);
  try {
    const c = await withSession();
    const since = (await sim.state()).lastEventSeq;
    const bad = await sim.contactSend(c.phone, r.scan.jid, 'garbled once', { corrupt: true });
    assert.equal(bad.devices[0].type, 'msg');
    await r.client.waitFor(x => x.upserts.some(u => u.key.id === bad.id && u.text === 'garbled once'), 15000, 'the resend');
    const evs = (await sim.events(since)).filter(e => ['tenant_retry_receipt', 'contact_resent'].includes(e.type));
    assert.deepEqual(evs.map(e => [e.type, e.id]), [['tenant_retry_receipt', bad.id], ['contact_resent', bad.id]]);
    // The contact's session moved on to the fresh one: its next message decrypts as usual.
    const next = await sim.contactSend(c.phone, r.scan.jid, 'after the resend');
    await r.client.waitFor(x => x.upserts.some(u => u.key.id === next.id && u.text === 'after the resend'), 10000, 'next');
    assert.equal((await sim.control('POST', '/contacts/send', { from: c.phone, to: r.scan.jid, text: 'x', corrupt: 1 })).status, 400);
  } finally {
    await sim.configure({ contactResends: 0 });
  }
});
