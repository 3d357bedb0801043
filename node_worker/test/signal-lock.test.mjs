// signal-lock.mjs with real libsignal through Baileys' repository and transaction layer: a decrypt and a send to the
// same contact at once (Baileys keys the first by the contact's jid, the second by ours). The store holds the
// decrypt's commit back, as a slow disk or the cluster's fenced commit does, while the send goes on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { B } from '../../tests/wa_sim/baileys.mjs';
import { Contact } from '../../tests/wa_sim/contact.mjs';
import { oneSignalLock } from '../src/signal-lock.mjs';

const quiet = { level: 'silent', trace() {}, debug() {}, info() {}, warn() {}, error() {}, fatal() {} };
quiet.child = () => quiet;
const turns = async (n) => { for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r)); };

/** A Contact playing the tenant: Baileys' repository over its keys, through a store whose next session write can
 *  be held (`holdNextSessionWrite()` -> release function), and relayMessage's transaction (keyed by our jid). */
function tenant(withLock) {
  const t = new Contact({ pushName: 'Tenant' });
  t.creds.me = { id: `${t.phone}:1@s.whatsapp.net` };
  let hold = null;
  const store = {
    get: (type, ids) => t.store.get(type, ids),
    async set(changes) {
      if (hold && 'session' in changes) {
        const h = hold;
        hold = null;
        h.started();
        await h.released;
      }
      t.store.setNow(changes);
    },
  };
  const keys = B.addTransactionCapability(store, quiet, { maxCommitRetries: 1, delayBetweenTriesMs: 0 });
  t.signal = B.DEFAULT_CONNECTION_CONFIG.makeSignalRepository(
    { creds: t.creds, keys: withLock ? oneSignalLock(keys, t.creds) : keys }, quiet, async () => []);
  t.holdNextSessionWrite = () => {
    let release;
    let started;
    const h = { released: new Promise((r) => { release = r; }), holding: new Promise((r) => { started = r; }) };
    h.started = started;
    hold = h;
    return { release, holding: h.holding };
  };
  /** relayMessage's shape: one transaction keyed by our jid, the session validated first, then the encrypt. */
  t.relay = (to, text) => keys.transaction(async () => {
    await t.signal.validateSession(to.lid);
    return t.signal.encryptMessage({ jid: to.lid, data: B.encodeWAMessage({ conversation: text }) });
  }, t.creds.me.id);
  return t;
}

async function decryptAtOnce(withLock) {
  const t = tenant(withLock);
  const bob = new Contact({ pushName: 'Bob' });
  const got = [];
  const toBob = async (m) => {
    try {
      got.push((await bob.decryptFrom(t.lid, m.type, m.ciphertext)).conversation);
    } catch (err) {
      got.push(`error: ${err.message}`);
    }
  };
  const fromBob = (text) => bob.encryptFor(t.lid, { conversation: text }, () => t.bundle.session());
  const decrypt = (m) => t.decryptFrom(bob.lid, m.type, m.ciphertext);

  await decrypt(await fromBob('a1'));
  await toBob(await t.relay(bob, 'b1'));
  await decrypt(await fromBob('a2'));
  const a3 = await fromBob('a3'); // the same chain as a2: decrypting it steps nothing
  // the decrypt runs and its commit is held; meanwhile a send to bob
  const { release, holding } = t.holdNextSessionWrite();
  const d = decrypt(a3);
  await holding;
  const r = t.relay(bob, 'b2');
  await turns(20);
  release();
  await d;
  await toBob(await r);
  await toBob(await t.relay(bob, 'b3')); // on whatever the store kept
  await decrypt(await fromBob('a4'));
  return got;
}

test('with one lock, a send waits for a decrypt\'s commit: no message counter is used twice', async () => {
  assert.deepEqual(await decryptAtOnce(true), ['b1', 'b2', 'b3']);
});

test('without it (Baileys\' per-jid keys), the decrypt\'s commit undoes the send\'s chain advance', async () => {
  const got = await decryptAtOnce(false);
  assert.deepEqual(got.slice(0, 2), ['b1', 'b2']);
  // b3 reused b2's counter: bob's libsignal has no key left for it ("Key used already" inside "No matching sessions")
  assert.match(got[2], /^error: (No matching sessions|Key used already)/, JSON.stringify(got));
});

// Two ways a lock too wide deadlocks (found in review): each must complete, with the lock as it is.
const { makeMutex } = await import(new URL('Utils/make-mutex.js', import.meta.resolve('@whiskeysockets/baileys')).href);
const memoryStore = () => {
  const mem = new Map();
  return {
    async get(type, ids) { return Object.fromEntries(ids.map((i) => [i, mem.get(type + i)])); },
    async set(d) { for (const type in d) for (const i in d[type]) mem.set(type + i, d[type][i]); },
  };
};
const within = (promise, ms, what) => Promise.race([promise,
  new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: stuck after ${ms} ms`)), ms).unref())]);

function socketLike(pnToLid = async () => []) {
  const creds = { me: { id: '111:1@s.whatsapp.net' } };
  const keys = B.addTransactionCapability(memoryStore(), quiet, { maxCommitRetries: 1, delayBetweenTriesMs: 0 });
  const repo = B.DEFAULT_CONNECTION_CONFIG.makeSignalRepository({ creds, keys: oneSignalLock(keys, creds) }, quiet,
    pnToLid);
  return { creds, keys, repo };
}

test('a devices notification deleting sessions while a send waits for the device list: both finish', async () => {
  const { creds, keys, repo } = socketLike();
  const devicesMutex = makeMutex();
  // relayMessage: its transaction (our jid), a usync IQ, then devicesMutex (Socket/messages-send.js getUSyncDevices)
  const relay = keys.transaction(async () => {
    await new Promise((r) => setTimeout(r, 50));
    await devicesMutex.mutex(async () => {});
  }, creds.me.id);
  await new Promise((r) => setTimeout(r, 10));
  // a devices "remove" notification during the IQ (Socket/messages-recv.js: devicesMutex, then deleteSession)
  const notification = devicesMutex.mutex(() => repo.deleteSession(['222:3@s.whatsapp.net']));
  await within(Promise.all([relay, notification]), 10000, 'send + devices notification');
});

test('a PN->LID lookup in flight outside any transaction, joined by a send: both finish', async () => {
  const usync = async (pns) => {
    await new Promise((r) => setTimeout(r, 50));
    return pns.map((pn) => ({ pn, lid: '999@lid' }));
  };
  const { creds, keys, repo } = socketLike(usync);
  const pn = '222@s.whatsapp.net';
  const outside = repo.lidMapping.getLIDForPN(pn); // e.g. getDecryptionJid for an incoming message
  const relay = keys.transaction(async () => {
    await new Promise((r) => setTimeout(r, 10));
    return repo.lidMapping.getLIDForPN(pn); // relayMessage's resolveTcTokenJid: joins the lookup in flight
  }, creds.me.id);
  assert.deepEqual(await within(Promise.all([outside, relay]), 10000, 'lookup + send'), ['999@lid', '999@lid']);
});
