// A failed decrypt attempt must not change the session it was tried on (docs/protocol.md "Sessions").
//
// libsignal 6.0.0 (the copy Baileys 7.0.0-rc14 ships), SessionCipher.decryptWithSessions: a `msg` is tried on each
// session of the peer's record in turn, most recently used first, ON THE LIVE OBJECTS. doDecryptWhisperMessage
// steps the ratchet (maybeStepRatchet: a new receiving chain, a new sending ephemeral and sending chain) and fills
// message keys BEFORE it checks the MAC. When the message belongs to an older session, the attempt on the newer one
// fails at the MAC but leaves that session ratcheted to garbage, and the older session's success then stores the
// whole record, garbage included. Every later send on the newer session is undecryptable for the peer ("Bad MAC"),
// so is every reply it sends on it, until retry receipts rebuild the session (and with them exhausted, or no sent
// store entry, messages are lost).
//
// It happens whenever a peer still writes on a session we have replaced: Baileys replaces ours on the first send of
// every new worker process (getUSyncDevices force-refreshes the sessions of "newly mapped" LIDs), so after any
// restart or takeover, messages the contact sent before it saw our new session corrupt it
// (tests/e2e/test_session_switch.py; seen in the takeover e2e as Bad MAC both ways).
//
// Fix, as libsignal-java does it (SessionCipher.decrypt works on `new SessionState(state)` copies): try each session
// on a copy; only the copy that decrypted is written back into the record's entry. Everything else is unchanged:
// the order of attempts, what is logged, the errors thrown, the record stored by the caller on success only.
import { createRequire } from 'node:module';

const PATCHED = Symbol.for('bsup.decryptOnCopies'); // on the prototype: the original method, once patched

/** Install the fix on a libsignal module ({SessionCipher, SessionRecord, SessionError}); idempotent. */
export function decryptOnCopies(libsignal) {
  const proto = libsignal.SessionCipher.prototype;
  if (proto[PATCHED]) return false;
  const original = proto.decryptWithSessions;
  const Entry = libsignal.SessionRecord.createEntry().constructor; // SessionEntry is not exported
  proto.decryptWithSessions = async function decryptWithSessions(data, sessions) {
    if (!sessions.length) throw new libsignal.SessionError('No sessions available');
    const errs = [];
    for (const session of sessions) {
      const trial = Entry.deserialize(session.serialize());
      let plaintext;
      try {
        plaintext = await this.doDecryptWhisperMessage(data, trial);
      } catch (e) {
        errs.push(e);
        continue;
      }
      trial.indexInfo.used = Date.now();
      // the caller holds the record, so the entry object itself takes the copy's state (pendingPreKey may be gone)
      for (const key of Object.keys(session)) delete session[key];
      Object.assign(session, trial);
      return { session, plaintext };
    }
    console.error('Failed to decrypt message with any known session...');
    for (const e of errs) console.error('Session error:' + e, e.stack);
    throw new libsignal.SessionError('No matching sessions found for message');
  };
  proto[PATCHED] = original;
  return true;
}

/** Undo decryptOnCopies (tests: the same scenario with libsignal's own method must fail). */
export function restoreLibsignalDecrypt(libsignal) {
  const proto = libsignal.SessionCipher.prototype;
  if (!proto[PATCHED]) return false;
  proto.decryptWithSessions = proto[PATCHED];
  delete proto[PATCHED];
  return true;
}

/** libsignal exactly as Baileys resolves it (one CJS module instance: patching it patches Baileys' decrypts). */
export function baileysLibsignal(baileysEntryUrl = import.meta.resolve('@whiskeysockets/baileys')) {
  return createRequire(baileysEntryUrl)('libsignal');
}
