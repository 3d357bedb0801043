// Outgoing: a send's Signal state is durable before its stanza leaves (docs/protocol.md "Outgoing"; the outbound
// twin of the decrypt journal's "journal -> ratchet commit -> receipt").
//
// Baileys' relayMessage runs the whole send inside `keys.transaction(...)` (Utils/auth-utils.js: writes are
// buffered in an AsyncLocalStorage context and committed when the outer work returns), and sendNode(stanza) is part
// of that work. So the encrypt's writes (the sending chain's advance; for a first message the session built from the
// fetched pre-key bundle; for a group our sender key) were committed only *after* the stanza left. A worker killed in
// between left the peer on a session our store never got: its reply failed ("No matching sessions", Bad MAC), or
// our next send reused a message counter (tests/e2e/test_send_session_durable.py).
//
// So encryptMessage / encryptGroupMessage, when called inside a transaction, note the keys the inner encrypt wrote
// (through the repository's own key store, wrapped by recordingKeys below: exact names, including a PN address
// resolved to its LID one), read them back through the transaction-aware get (which sees the buffered values) and
// write them to the raw key store (auth-state.mjs) before returning: durable locally (fsync + rename + dir fsync),
// and in cluster mode committed by the daemon (its set resolves on the fenced commit, state-sync.mjs). The
// transaction's commit then skips those values (committingKeys: the same objects), so a send writes no more than
// before, only earlier. Independent of the journal (BSUP_JOURNAL=off keeps it). Outside a transaction the inner
// encrypt commits before it returns: nothing to add.
// libsignal serialises operations per address in a job queue that runs a job queued while another runs in the first
// caller's async context, so a concurrent decrypt and encrypt of one address could swap contexts; they no longer run
// concurrently: every jid-keyed Signal transaction takes the send's lock (signal-lock.mjs).
import { AsyncLocalStorage } from 'node:async_hooks';

const TRACKED = new Set(['session', 'sender-key', 'identity-key']);

/** rawKeys: the store under Baileys' transaction layer ({get, set}; set resolves once durable/committed). */
export function makeSendDurable(rawKeys) {
  const scope = new AsyncLocalStorage(); // Map type -> Set of ids written by the encrypt running in this context
  let durableWrites = 0;
  let rewritesSkipped = 0;
  const durableValues = new Map(); // "type/id" -> the value object written above, until the transaction commits it

  /** The repository's key store, noting what an encrypt in `scope` writes. */
  const recordingKeys = (keys) => new Proxy(keys, {
    get(target, prop, receiver) {
      if (prop === 'set') {
        return (data) => {
          const written = scope.getStore();
          if (written) {
            for (const type of Object.keys(data)) {
              if (!TRACKED.has(type)) continue;
              if (!written.has(type)) written.set(type, new Set());
              for (const id of Object.keys(data[type] ?? {})) written.get(type).add(id);
            }
          }
          return target.set(data);
        };
      }
      return Reflect.get(target, prop, receiver);
    },
  });

  const through = async (keys, encrypt) => {
    if (!keys.isInTransaction?.()) return encrypt();
    const written = new Map();
    const out = await scope.run(written, encrypt);
    if (written.size) {
      const data = {};
      for (const [type, ids] of written) {
        const got = await keys.get(type, [...ids]); // the transaction's view: the values the stanza was made with
        data[type] = Object.fromEntries([...ids].map((id) => [id, got[id] ?? null]));
      }
      await rawKeys.set(data); // a failed write is fatal (auth_write_failed): the stanza never leaves
      durableWrites += 1;
      for (const [type, values] of Object.entries(data)) {
        for (const [id, value] of Object.entries(values)) if (value) durableValues.set(`${type}/${id}`, value);
      }
    }
    return out;
  };

  /** Wraps a Baileys signal repository built on recordingKeys(keys); `keys`: the transaction-capable store. */
  const wrapRepository = (inner, keys) => new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'encryptMessage') return (args) => through(keys, () => target.encryptMessage(args));
      if (prop === 'encryptGroupMessage') return (args) => through(keys, () => target.encryptGroupMessage(args));
      return Reflect.get(target, prop, receiver);
    },
  });

  /** The store Baileys commits to: a value the transaction's commit brings that is the very object written above
   *  (its cache and mutations hold the same references) is already on disk, so it is not written again; the send
   *  then costs the same number of writes as before, only earlier. Anything else passes through. */
  const committingKeys = (keys) => ({
    ...keys,
    get: (type, ids) => keys.get(type, ids),
    set: (data) => {
      let out = null;
      for (const type of Object.keys(data)) {
        for (const [id, value] of Object.entries(data[type] ?? {})) {
          const k = `${type}/${id}`;
          if (!durableValues.has(k)) continue;
          const same = durableValues.get(k) === value;
          durableValues.delete(k); // one commit per durable write; a different value is newer: written as usual
          if (!same) continue;
          out ??= Object.fromEntries(Object.entries(data).map(([t, v]) => [t, { ...v }]));
          delete out[type][id];
          rewritesSkipped += 1;
        }
      }
      if (!out) return keys.set(data);
      for (const type of Object.keys(out)) if (!Object.keys(out[type]).length) delete out[type];
      return Object.keys(out).length ? keys.set(out) : Promise.resolve();
    },
  });

  return { recordingKeys, wrapRepository, committingKeys,
    get durableWrites() { return durableWrites; }, get rewritesSkipped() { return rewritesSkipped; } };
}

/** Test hook (BSUP_TEST_HOLD_SESSION_COMMITS=<marker file>, tests/e2e/test_send_session_durable.py): the key store
 *  Baileys commits to never finishes a write holding a session or sender key (the relay transaction's commit), so
 *  the test can SIGKILL the worker after the stanza reached the contact but before that commit. The first such write
 *  creates the marker file; a worker that finds it at start holds nothing (the restarted worker runs normally). The
 *  durable write above goes to the unwrapped store, so it is never held. */
export function holdSessionCommits(keys, marker, { existsSync, writeFileSync }) {
  if (!marker || existsSync(marker)) return keys;
  return {
    ...keys,
    get: (type, ids) => keys.get(type, ids),
    set: (data) => {
      if (!('session' in data) && !('sender-key' in data)) return keys.set(data);
      if (!existsSync(marker)) writeFileSync(marker, `${process.pid}\n`);
      return new Promise(() => {});
    },
  };
}
