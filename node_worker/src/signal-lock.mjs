// One lock for sends and every Signal operation on a peer (docs/protocol.md "Sessions").
//
// Baileys 7.0.0-rc14 serialises key transactions per key (Utils/auth-utils.js): a decrypt's transaction is keyed by
// the sender's jid, a send's (relayMessage, the retry resend, sendRetryRequest) by our own jid. A decrypt and a send
// to the same contact therefore run concurrently, and each works on its own transaction's copy of the contact's
// session record, committed when its transaction ends. libsignal's per-address job queue orders the two jobs, but
// not the commits: the decrypt's job ends, the send's job reads the record before the decrypt's commit landed (or
// the send had it cached since its validateSession), and whichever commit lands last silently undoes the other.
// Measured in the takeover e2e (a new owner's worker decrypting the offline backlog while the outbox sends): the
// send's chain advance was undone, the next send reused its message counter ("Key used already" at the contact, a
// resend out of order); the other way round a decrypt's ratchet step is lost.
//
// So the repository's transactions keyed by a jid (decrypt, encrypt, session injection, sender keys; our journal's
// decrypt transaction too) take the lock relayMessage takes: Baileys' own transaction with our jid as the key. A
// transaction nested in another (an encrypt inside relayMessage) joins it, as before. Incoming messages cost
// nothing: Baileys already decrypts one at a time (messageMutex); a decrypt now waits for a send in progress,
// including the send's network round trips (device list, pre-key bundles), and the reverse.
// Transactions keyed otherwise keep their keys: `lid-mapping` (storeLIDPNMappings), `delete-N-sessions`
// (deleteSession) and `migrate-...` (migrateSession). Moving those onto our jid deadlocks: a devices notification
// holds devicesMutex and deletes sessions while relayMessage, holding our jid, waits for devicesMutex
// (getUSyncDevices); and a PN->LID lookup made outside any transaction, which a send or a decrypt holding our jid
// joins, stores its answer in a `lid-mapping` transaction (node_worker/test/signal-lock.test.mjs has both).

/** Baileys keys a Signal operation's transaction by the peer's or the group's jid (Signal/libsignal.js). */
const isJid = (key) => typeof key === 'string' && key.includes('@');

/** `keys`: Baileys' transaction-capable store; `creds`: the socket's creds (me.id is set before any message). */
export function oneSignalLock(keys, creds) {
  return new Proxy(keys, {
    get(target, prop, receiver) {
      if (prop === 'transaction') {
        // the key relayMessage uses (Socket/messages-send.js: meId = authState.creds.me.id), read at each call
        return (work, key) => target.transaction(work, isJid(key) ? creds.me?.id ?? 'signal' : key);
      }
      return Reflect.get(target, prop, receiver);
    },
  });
}
