// Messages, step 3: the per-device server queue. Stanzas stay queued until the device's receipt
// or error ack; what is queued at login goes out with offline="1" before <ib><offline count=N>,
// which can be held; a lost receipt means a redelivery at the next login.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, openClient, pairAndLogin, until, MESSAGING_CLIENT as CLIENT } from '../harness.mjs';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

const device = async (jid) => (await sim.state()).devices[jid];

test('queued while offline: delivered at login with offline="1" before a held <ib><offline>, in order', async () => {
  const r = await pairAndLogin(sim, CLIENT);
  const jid = r.scan.jid;
  await r.client.end();
  const c = await sim.newContact();
  const ids = [];
  for (let i = 1; i <= 5; i++) ids.push((await sim.contactSend(c.phone, jid, `offline ${i}`)).id);
  assert.deepEqual((await device(jid)).queue.map(e => [e.id, e.sends]), ids.map(id => [id, 0]), 'queued, not sent');

  await sim.control('POST', '/offline/hold');
  const since = (await sim.state()).lastEventSeq;
  const again = await openClient({ wsUrl: sim.wsUrl, authDir: r.authDir, ...CLIENT });
  // Baileys receipts every offline message while the <ib><offline> is still withheld.
  await until(async () => (await device(jid)).queue.length === 0, 15000, 'receipts for the offline batch');
  const evs = await sim.events(since);
  assert.equal(evs.filter(e => e.type === 'offline_delivered').length, 0, '<ib><offline> is held');
  assert.deepEqual(evs.filter(e => e.type === 'receipt').flatMap(e => e.ids), ids);
  const rel = await sim.control('POST', '/offline/release');
  assert.equal(rel.released, 1);
  await again.waitFor(x => ids.every(id => x.upserts.some(u => u.key.id === id)), 15000, 'upserts');
  const got = again.upserts.filter(u => ids.includes(u.key.id));
  assert.deepEqual(got.map(u => u.text), ids.map((_, i) => `offline ${i + 1}`), 'in order');
  assert.ok(got.every(u => u.type === 'append'), 'offline messages are upserted as append');
  const off = (await sim.events(since)).find(e => e.type === 'offline_delivered');
  assert.equal(off.count, 5);
  const st = await device(jid);
  assert.equal(st.stats.offlineBatches, 1);
  assert.equal(st.stats.redelivered, 0);
  await again.end();
});

test('offlineHoldMs delays <ib><offline> after the batch', async () => {
  const r = await pairAndLogin(sim, CLIENT);
  await r.client.end();
  const c = await sim.newContact();
  await sim.contactSend(c.phone, r.scan.jid, 'held');
  await sim.configure({ offlineHoldMs: 1500 });
  try {
    const since = (await sim.state()).lastEventSeq;
    const again = await openClient({ wsUrl: sim.wsUrl, authDir: r.authDir, ...CLIENT });
    await again.waitOpen(10000);
    const off = await until(async () => (await sim.events(since)).find(e => e.type === 'offline_delivered'), 15000, 'ib offline');
    const login = (await sim.events(since)).find(e => e.type === 'login');
    assert.ok(off.t - login.t >= 1500, `<ib><offline> ${off.t - login.t} ms after login`);
    await again.end();
  } finally {
    await sim.configure({ offlineHoldMs: 0 });
  }
});

test('a lost receipt: the message is redelivered at the next login; the replayed pkmsg gets <ack error=487>', async () => {
  const r = await pairAndLogin(sim, CLIENT);
  const jid = r.scan.jid;
  const c = await sim.newContact();
  assert.equal((await sim.control('POST', '/receipts/drop', { jid })).ok, true);
  const sent = await sim.contactSend(c.phone, jid, 'receipt lost');
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === sent.id), 10000, 'live upsert');
  await until(async () => (await device(jid)).stats.receiptsDropped === 1, 5000, 'dropped receipt');
  assert.deepEqual((await device(jid)).queue.map(e => e.id), [sent.id], 'still queued');
  await r.client.end();

  const again = await openClient({ wsUrl: sim.wsUrl, authDir: r.authDir, ...CLIENT });
  await again.waitOpen(10000);
  const st = await until(async () => { const d = await device(jid); return d.queue.length === 0 && d; }, 10000, 'error ack');
  // Baileys already used the pre-key and advanced the ratchet: it cannot decrypt the replay and
  // says so with an error ack, which dequeues the message (PROTOCOL.md §6, incoming 4-5).
  assert.deepEqual(st.stats.errorAcks, { 487: 1 });
  assert.equal(st.stats.redelivered, 1);
  assert.ok(!again.upserts.some(u => u.key.id === sent.id && u.text), 'no second upsert with the text');
  await again.end();
});

test('a lost receipt for a msg: the replay cannot be decrypted; retry receipt and <ack error=500> are recorded', async () => {
  const r = await pairAndLogin(sim, CLIENT);
  const jid = r.scan.jid;
  const c = await sim.newContact();
  // Start from the tenant so the contact's answers are msg, not pkmsg.
  const hello = await r.client.sock.sendMessage(c.jid, { text: 'hello' });
  await until(async () => (await sim.inbox(c.phone)).messages.some(m => m.id === hello.key.id), 10000, 'decrypt');
  await sim.control('POST', '/receipts/drop', { jid });
  const sent = await sim.contactSend(c.phone, jid, 'msg, receipt lost');
  assert.equal(sent.devices[0].type, 'msg');
  await r.client.waitFor(x => x.upserts.some(u => u.key.id === sent.id && u.text), 10000, 'live upsert');
  await until(async () => (await device(jid)).stats.receiptsDropped === 1, 5000, 'dropped receipt');
  await r.client.end();

  const before = (await sim.state()).counters.tenantRetryReceipts;
  const again = await openClient({ wsUrl: sim.wsUrl, authDir: r.authDir, ...CLIENT });
  const st = await until(async () => { const d = await device(jid); return d.queue.length === 0 && d; }, 10000, 'error ack');
  assert.deepEqual(st.stats.errorAcks, { 500: 1 });
  assert.equal((await sim.state()).counters.tenantRetryReceipts, before + 1);
  assert.deepEqual((await sim.inbox(c.phone)).retriesIn.map(x => [x.id, x.from]), [[sent.id, jid]]);
  // Baileys upserts a CIPHERTEXT stub for it (the text was only in the first, live copy).
  await again.waitFor(x => x.upserts.some(u => u.key.id === sent.id && u.stub), 10000, 'stub');
  await again.end();
});
