// The decrypt journal (src/journal.mjs) with real Baileys in this process against the WhatsApp Web simulator: a
// contact's `msg` (after the tenant replied) whose receipt is lost is redelivered at the next login and answered
// from the journal; without the journal the same redelivery is a CIPHERTEXT stub and an error ack.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startSim, pairAndLogin, openClient, until, MESSAGING_CLIENT } from '../../tests/wa_sim/harness.mjs';
import { B } from '../../tests/wa_sim/baileys.mjs';
import { openJournal, keyRef } from '../src/journal.mjs';
import { decodeRecords } from '../src/journal-log.mjs';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

const base = B.DEFAULT_CONNECTION_CONFIG.makeSignalRepository;
const journaled = (journal) => ({
  ...MESSAGING_CLIENT,
  makeSignalRepository: (auth, logger, pn) => journal.wrapRepository(base(auth, logger, pn), auth.keys),
});
/** The journal's state as a fresh reader sees it on disk: hash -> newest record (the log, all segments). */
const onDisk = (authDir) => {
  const dir = join(authDir, 'journal');
  const state = new Map();
  for (const n of readdirSync(dir).filter((x) => /^seg-\d+\.log$/.test(x)).sort()) {
    for (const r of decodeRecords(readFileSync(join(dir, n))).records) state.set(r.hash, r);
  }
  return state;
};
const deviceOf = async (jid) => (await sim.control('GET', '/mailbox')).devices[jid];

/** Pair, reply once (so the contact's next message is a `msg`), then lose the receipt of that `msg`. */
async function msgWithLostReceipt(opts, journal) {
  const r = await pairAndLogin(sim, opts);
  if (journal) r.client.sock.ws.on('CB:message', journal.noteStanza); // as socket.mjs does
  const c = await sim.newContact({ pushName: 'Bob' });
  const first = await sim.contactSend(c.phone, r.scan.jid, 'hi');
  await r.client.waitFor((x) => x.upserts.some((u) => u.key.id === first.id), 10000, 'first upsert');
  await r.client.sock.sendMessage(c.jid, { text: 'hello Bob' });
  await until(async () => (await sim.inbox(c.phone)).messages.some((m) => m.text === 'hello Bob'), 10000, 'reply');
  await sim.control('POST', '/receipts/drop', { jid: r.scan.jid });
  const sent = await sim.contactSend(c.phone, r.scan.jid, 'the msg');
  assert.equal(sent.devices[0].type, 'msg');
  await r.client.waitFor((x) => x.upserts.some((u) => u.key.id === sent.id), 10000, 'msg upsert');
  await until(async () => (await deviceOf(r.scan.jid)).stats.receiptsDropped === 1, 5000, 'receipt dropped');
  await r.client.end();
  return { r, c, sent };
}

test('a redelivered msg is answered from the journal: normal receipt, no error ack, no second event', async () => {
  const authDir = (await import('../../tests/wa_sim/harness.mjs')).tmpAuthDir();
  const j1 = await openJournal(authDir);
  const { r, sent } = await msgWithLostReceipt({ ...journaled(j1), authDir }, j1);
  const records = [...onDisk(authDir).values()];
  assert.equal(records.length, 2); // the pkmsg and the msg, both unacked
  assert.ok(records.every((e) => !e.acked));
  const entry = records.find((e) => e.envelope.attrs.id === sent.id);
  assert.equal(entry.envelope.enc.type, 'msg');

  // The next worker: a new journal on the same directory, a new socket. What it would re-emit at start:
  const j2 = await openJournal(authDir);
  const pending = j2.pending();
  assert.deepEqual(pending.map((p) => p.entries[0].envelope.attrs.id).slice(-1), [sent.id]);
  const client = await openClient({ wsUrl: sim.wsUrl, authDir, ...journaled(j2) });
  client.sock.ws.on('CB:message', j2.noteStanza);
  await client.waitOpen(10000);
  await until(async () => (await deviceOf(r.scan.jid)).queue.length === 0, 10000, 'the redelivery receipted');
  const dev = await deviceOf(r.scan.jid);
  assert.ok(dev.stats.redelivered >= 1);
  assert.deepEqual(dev.stats.errorAcks, {});
  await client.waitFor((x) => x.upserts.some((u) => u.key.id === sent.id), 10000, 'redelivered upsert');
  const up = client.upserts.find((u) => u.key.id === sent.id);
  assert.equal(up.text, 'the msg'); // the journal's plaintext, not a stub
  assert.equal(up.stub, null);
  assert.equal(j2.refFor({ key: up.key }).emit, false); // already re-emitted at start: not twice
  // Acked: a tombstone without plaintext, and nothing waits any more.
  await j2.ack(pending.map((p) => p.ref));
  assert.equal(j2.unacked, 0);
  await j2.flush();
  const after = onDisk(authDir).get(entry.hash);
  assert.equal(after.pt, undefined);
  assert.equal(after.envelope, undefined);
  assert.ok(after.acked > 0);
  await client.end();
});

test('without the journal the same redelivery cannot be decrypted (what the journal prevents)', async () => {
  const authDir = (await import('../../tests/wa_sim/harness.mjs')).tmpAuthDir();
  const { r, sent } = await msgWithLostReceipt({ ...MESSAGING_CLIENT, authDir });
  const client = await openClient({ wsUrl: sim.wsUrl, authDir, ...MESSAGING_CLIENT });
  await client.waitOpen(10000);
  await client.waitFor((x) => x.upserts.some((u) => u.key.id === sent.id), 10000, 'redelivered upsert');
  const up = client.upserts.find((u) => u.key.id === sent.id);
  assert.equal(up.text, null);
  assert.equal(up.stub, B.proto.WebMessageInfo.StubType.CIPHERTEXT);
  await until(async () => Object.keys((await deviceOf(r.scan.jid)).stats.errorAcks).length > 0, 10000, 'error ack');
  await client.end();
});

test('backpressure: a new stanza waits while maxUnacked entries are unacked; an ack lets it through', async () => {
  const authDir = (await import('../../tests/wa_sim/harness.mjs')).tmpAuthDir();
  const j = await openJournal(authDir, { maxUnacked: 1 });
  const r = await pairAndLogin(sim, { ...journaled(j), authDir });
  r.client.sock.ws.on('CB:message', j.noteStanza);
  const c = await sim.newContact();
  const one = await sim.contactSend(c.phone, r.scan.jid, 'one');
  await r.client.waitFor((x) => x.upserts.some((u) => u.key.id === one.id), 10000, 'first upsert');
  const two = await sim.contactSend(c.phone, r.scan.jid, 'two');
  // `one` is unacked: `two` is not decrypted and gets no receipt; the server keeps it queued.
  await until(async () => (await deviceOf(r.scan.jid)).stats.sent >= 2, 5000, 'two delivered to the socket');
  assert.equal(j.unacked, 1);
  assert.deepEqual((await deviceOf(r.scan.jid)).queue.map((e) => e.id), [two.id]);
  await j.ack([j.refFor({ key: { id: one.id } }).ref]);
  await r.client.waitFor((x) => x.upserts.some((u) => u.key.id === two.id), 10000, 'second upsert after the ack');
  await until(async () => (await deviceOf(r.scan.jid)).queue.length === 0, 5000, 'two receipted');
  await r.client.end();
});

test('a CIPHERTEXT stub upserted after its resend was journaled keeps its key ref; the resend is still emitted', async () => {
  // Logic only (a fake inner repository): Baileys' offline buffer can upsert the failed copy's stub after the resend
  // (same WhatsApp id) went through the journal (tests/e2e/test_retry_resend.py has the real path).
  const { mkdtempSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const j = await openJournal(mkdtempSync(join(tmpdir(), 'journal-stub-')));
  const ct = Buffer.from('resend ciphertext');
  const key = { remoteJid: '15551000001@s.whatsapp.net', fromMe: false, id: '3EB0RESENT' };
  j.noteStanza({ tag: 'message', attrs: { from: key.remoteJid, id: key.id }, content: [{ tag: 'enc', attrs: { type: 'pkmsg' }, content: ct }] });
  const repo = j.wrapRepository({ decryptMessage: async () => Buffer.from([1]) }, { transaction: (fn) => fn() });
  await repo.decryptMessage({ type: 'pkmsg', ciphertext: ct, jid: key.remoteJid });
  assert.equal(j.unacked, 1);
  const stub = j.refFor({ key, messageStubType: 2 });
  assert.deepEqual([stub.emit, stub.journaled, stub.ref], [true, false, keyRef(key)]);
  const content = j.refFor({ key, message: { conversation: 'hi' } });
  assert.deepEqual([content.emit, content.journaled], [true, true]);
  assert.notEqual(content.ref, stub.ref);
  await j.close();
});
