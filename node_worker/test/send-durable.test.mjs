// send-durable.mjs with Baileys' real signal repository and transaction layer over an in-memory raw store (a unit
// test of the ordering; the worker's real file store and a SIGKILL: tests/e2e/test_send_session_durable.py).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { B } from '../../tests/wa_sim/baileys.mjs';
import { Contact } from '../../tests/wa_sim/contact.mjs';
import { makeSendDurable } from '../src/send-durable.mjs';

const quiet = { level: 'silent', trace() {}, debug() {}, info() {}, warn() {}, error() {}, fatal() {} };
quiet.child = () => quiet;

/** The raw store: plain maps, and every set() call in order. */
function rawStore() {
  const data = new Map();
  const sets = [];
  const bucket = (type) => data.get(type) ?? data.set(type, new Map()).get(type);
  return {
    sets,
    peek: (type, id) => bucket(type).get(id),
    async get(type, ids) {
      return Object.fromEntries(ids.filter((id) => bucket(type).has(id)).map((id) => [id, bucket(type).get(id)]));
    },
    async set(changes) {
      sets.push(changes);
      for (const [type, entries] of Object.entries(changes)) {
        for (const [id, v] of Object.entries(entries)) (v == null ? bucket(type).delete(id) : bucket(type).set(id, v));
      }
    },
  };
}

function sender() {
  const raw = rawStore();
  const durable = makeSendDurable(raw);
  // as socket.mjs: Baileys' transactions commit through committingKeys
  const keys = B.addTransactionCapability(durable.committingKeys(raw), quiet,
    { maxCommitRetries: 1, delayBetweenTriesMs: 0 });
  const creds = B.initAuthCreds();
  const base = B.DEFAULT_CONNECTION_CONFIG.makeSignalRepository({ creds, keys: durable.recordingKeys(keys) }, quiet,
    async () => []);
  return { raw, keys, durable, repo: durable.wrapRepository(base, keys) };
}

const data = (text) => B.encodeWAMessage({ conversation: text });

test('inside a transaction the encrypt\'s session is in the raw store before the encrypt returns', async () => {
  const { raw, keys, repo, durable } = sender();
  const bob = new Contact({ pushName: 'Bob' });
  const jid = `${bob.phone}@s.whatsapp.net`;
  const addr = repo.jidToSignalProtocolAddress(jid);
  const msgs = [];
  for (const text of ['one', 'two']) {
    await keys.transaction(async () => {
      if (!(await repo.validateSession(jid)).exists) {
        await repo.injectE2ESession({ jid, session: bob.bundle.session() });
      }
      const before = raw.peek('session', addr);
      msgs.push(await repo.encryptMessage({ jid, data: data(text) }));
      // what relayMessage does next is sendNode(stanza): the session it was made with must be durable by now
      const now = raw.peek('session', addr);
      assert.ok(now, 'session written before the transaction commits');
      assert.notDeepEqual(now, before);
      const { [addr]: seen } = await keys.get('session', [addr]);
      assert.deepEqual(now, seen); // the transaction's own view, not an older value
    }, 'me');
  }
  assert.deepEqual(msgs.map((m) => m.type), ['pkmsg', 'pkmsg']); // no reply yet: still pre-key messages
  assert.equal(durable.durableWrites, 2);
  // the commits after the "stanza" did not write the same session again: one write per send, as without the wrapper
  assert.equal(raw.sets.filter((w) => w.session && addr in w.session).length, 2);
  assert.equal(durable.rewritesSkipped, 2);
  // the peer decrypts both (the chain advanced in between)
  const from = `${'1'.repeat(12)}@s.whatsapp.net`;
  for (const [i, m] of msgs.entries()) {
    const pt = await bob.signal.decryptMessage({ jid: from, type: m.type, ciphertext: m.ciphertext });
    assert.equal(B.proto.Message.decode(B.unpadRandomMax16(pt)).conversation, ['one', 'two'][i]);
  }
});

test('a group encrypt writes our sender key before returning', async () => {
  const { raw, keys, repo } = sender();
  const group = '120363000000000001@g.us';
  const meId = '15550001111:3@s.whatsapp.net';
  await keys.transaction(async () => {
    assert.equal(raw.sets.length, 0);
    await repo.encryptGroupMessage({ group, meId, data: data('hi all') });
    const written = raw.sets.flatMap((s) => Object.keys(s['sender-key'] ?? {}));
    assert.equal(written.length, 1, JSON.stringify(raw.sets));
    const { [written[0]]: seen } = await keys.get('sender-key', [written[0]]);
    assert.deepEqual(raw.peek('sender-key', written[0]), seen);
  }, 'me');
});

test('outside a transaction nothing is written twice (the encrypt commits itself)', async () => {
  const { raw, repo, durable } = sender();
  const bob = new Contact({ pushName: 'Bob' });
  const jid = `${bob.phone}@s.whatsapp.net`;
  await repo.injectE2ESession({ jid, session: bob.bundle.session() });
  const n = raw.sets.length;
  await repo.encryptMessage({ jid, data: data('x') });
  assert.equal(raw.sets.length, n + 1); // Baileys' own commit only
  assert.equal(durable.durableWrites, 0);
});
