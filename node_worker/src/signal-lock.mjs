// One lock for every Signal transaction of the socket (docs/protocol.md "Sessions").
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
// So the repository's transactions (decrypt, encrypt, session injection and migration, sender keys; our journal's
// decrypt transaction too) take the lock relayMessage takes: Baileys' own transaction with our jid as the key. A
// transaction nested in another (an encrypt inside relayMessage) joins it, as before. Incoming messages cost
// nothing: Baileys already decrypts one at a time (messageMutex); a decrypt now waits for a send in progress.
// Deadlock-free because nothing that holds our jid's lock waits for a decrypt (relayMessage waits for IQ answers,
// which the socket dispatches outside messageMutex).

/** `keys`: Baileys' transaction-capable store; `creds`: the socket's creds (me.id is set before any message). */
export function oneSignalLock(keys, creds) {
  return new Proxy(keys, {
    get(target, prop, receiver) {
      if (prop === 'transaction') {
        // the key relayMessage uses (Socket/messages-send.js: meId = authState.creds.me.id), read at each call
        return (work, _key) => target.transaction(work, creds.me?.id ?? 'signal');
      }
      return Reflect.get(target, prop, receiver);
    },
  });
}
