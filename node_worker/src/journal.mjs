// The decrypt journal: nothing is acknowledged to WhatsApp before it is durable (docs/protocol.md "Incoming").
//
// Baileys sends the delivery receipt (the receipt *is* the ack) before `messages.upsert`, and commits the Signal
// ratchet before the receipt, so neither a late receipt nor a redelivery can save a message a SIGKILL caught in
// between (shared notes, baileys-messages.md §1). The one seam before both is the socket option
// `makeSignalRepository`: our wrapper decrypts inside `keys.transaction(...)` and durably writes
// {hash, envelope, plaintext} before returning, so the order is journal -> ratchet commit -> receipt. A stanza the
// server delivers again (its receipt was lost) is answered from the journal instead of libsignal, which would
// fail it (pkmsg: 487, msg: "No matching sessions" + a CIPHERTEXT stub).
//
// Entries live in the append-only log <auth>/journal/seg-<n>.log (journal-log.mjs: one fdatasync per decrypt,
// shared by decrypts that land together; a torn tail is detected by length + checksum and cut off).
//   - unacked: {hash, ref, msgKey, seq, at, envelope, pt}; durable before decrypt returns; kept until the daemon's
//     `ack` names its ref (it is the only copy of the message), re-emitted at every start (`recovered: true`) and
//     on `replay`.
//   - acked: a tombstone record {hash, ref, msgKey, at, acked} without envelope or plaintext, appended unsynced; a
//     redelivered stanza gets an empty plaintext (Baileys sends its receipt, we drop the upsert). Tombstones are
//     forgotten after TOMBSTONE_MS or beyond MAX_TOMBSTONES, oldest first, and vanish at the next compaction.
// Migration: the previous layout, one <auth>/journal/<hash>.json per entry (atomic writer, auth-files.mjs), is
// read at open, copied into a new segment (durably), then its files are deleted; unacked ones are re-emitted.
// Backpressure: a stanza that would need libsignal waits while `maxUnacked` entries are unacked (the daemon's
// spool is full or its acks stall): no decrypt, no receipt, and WhatsApp keeps the rest queued.
// Cluster mode (`sync`, state-sync.mjs; docs/cluster.md "The decrypt journal"): the store is the truth. Each unacked
// entry also goes to the daemon as the key `journal/<hash>.json` holding the legacy per-file JSON, and the decrypt
// returns only once the daemon committed it (fenced): journal in the store -> ratchet commit -> receipt. The local
// append is then not fdatasynced (the daemon rebuilds journal/ from the store before every spawn: the rows become
// legacy files, migrated below). The entry is pushed deferred so it shares one transaction with the ratchet's write.
// An ack deletes the rows (not awaited, deferred up to DELETE_DELAY_MS to ride with the next decrypt: a lost delete
// re-emits the message under its stable event id); a store row this log knows as acked is deleted again at open.
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { makeAuthFiles, prepareDir, commitGate } from './auth-files.mjs';
import { openLog } from './journal-log.mjs';

export const TOMBSTONE_MS = 7 * 24 * 3600 * 1000;
export const MAX_TOMBSTONES = 5000;
export const DEFAULT_MAX_UNACKED = 100;
export const DELETE_DELAY_MS = 1000; // cluster mode: an ack's row deletes wait at most this long for a decrypt to join
const STUB_CIPHERTEXT = 2; // proto.WebMessageInfo.StubType.CIPHERTEXT: Baileys' upsert for a failed decrypt
const EMPTY_PLAINTEXT = Buffer.from([1]); // unpadRandomMax16 -> 0 bytes -> an empty proto.Message

export const hashOf = (type, ciphertext) => createHash('sha256').update(type).update(ciphertext).digest('hex');

/** The ref of an upsert that did not come through the journal (our own sends, stubs without a decrypt): a hash of
 *  its key, so it is stable too. Acking it is a no-op. */
export const keyRef = (key) => createHash('sha256')
  .update(`${key?.remoteJid ?? ''}|${key?.fromMe ? 1 : 0}|${key?.id ?? ''}|${key?.participant ?? ''}`).digest('hex');

const stanzaKey = (attrs) => `${attrs.from ?? ''}|${attrs.participant ?? ''}|${attrs.id ?? ''}`;

/** Options from the environment (test hooks and the benchmark's switch; docs/protocol.md). */
export function journalOptions(env = process.env) {
  const max = Number(env.BSUP_JOURNAL_MAX_UNACKED);
  const killAfter = Number(env.BSUP_TEST_KILL_AFTER_JOURNAL);
  return {
    enabled: env.BSUP_JOURNAL !== 'off',
    maxUnacked: Number.isInteger(max) && max > 0 ? max : DEFAULT_MAX_UNACKED,
    killAfterWrites: Number.isInteger(killAfter) && killAfter > 0 ? killAfter : 0,
  };
}

/** BSUP_JOURNAL=off with BSUP_TEST_KILL_AFTER_JOURNAL=N (tests only): SIGKILL right after the N-th decrypt has
 *  committed the ratchet, before the receipt: what the journal prevents (the redelivery then fails with 487 or a
 *  CIPHERTEXT stub). */
export function killAfterDecrypts(inner, n) {
  let count = 0;
  const after = async (p) => {
    const pt = await p;
    if (++count >= n) process.kill(process.pid, 'SIGKILL');
    return pt;
  };
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'decryptMessage') return (args) => after(target.decryptMessage(args));
      if (prop === 'decryptGroupMessage') return (args) => after(target.decryptGroupMessage(args));
      return Reflect.get(target, prop, receiver);
    },
  });
}

export const storeKey = (hash) => `journal/${hash}.json`;

export async function openJournal(authDir, { onWriteError = () => {}, maxUnacked = DEFAULT_MAX_UNACKED,
  killAfterWrites = 0, now = Date.now, compactMinBytes, sync = null } = {}) {
  const dir = join(authDir, 'journal');
  await prepareDir(dir);
  const legacy = makeAuthFiles(dir, { onWriteError }); // the per-file layout: read once, then deleted
  const log = await openLog(dir, { compactMinBytes });
  const entries = new Map(); // hash -> entry (unacked or tombstone)
  const byRef = new Map(); // ref -> Set of hashes (a message with several enc children has several entries)
  const envelopes = new Map(); // hash -> stanza attrs + enc attrs, from the CB:message listener (this process)
  const byStanza = new Map(); // stanzaKey -> ref of the message (several enc children share one ref)
  const byWaId = new Map(); // WhatsApp message id -> ref (to find the ref of an upsert)
  const emitted = new Set(); // refs emitted by this process and not acked (an upsert of them is a duplicate)
  let waiters = [];
  let seq = 0;
  let writes = 0;
  let unackedCount = 0; // kept in step with `entries`: the backpressure check runs per stanza
  let tombCount = 0;
  const drop = (e) => {
    const old = entries.get(e.hash);
    if (!old) return;
    entries.delete(e.hash);
    if (old.acked) tombCount--; else unackedCount--;
    byRef.get(old.ref)?.delete(old.hash);
    if (byRef.get(old.ref)?.size === 0) byRef.delete(old.ref);
  };
  const put = (e) => {
    drop(e);
    entries.set(e.hash, e);
    if (e.acked) tombCount++; else unackedCount++;
    if (!byRef.has(e.ref)) byRef.set(e.ref, new Set());
    byRef.get(e.ref).add(e.hash);
  };

  const load = (e) => {
    if (entries.get(e.hash)?.acked && !e.acked) return; // an ack is final, in whichever file it was found
    put(e);
    seq = Math.max(seq, e.seq ?? 0);
    if (!e.acked && e.envelope?.attrs?.id) byWaId.set(e.envelope.attrs.id, e.ref);
  };
  for (const e of log.live.values()) load(e);
  const migrated = [];
  const staleRows = []; // cluster mode: store rows of entries this log has as acked (their delete was lost)
  for (const name of await readdir(dir)) {
    if (!name.endsWith('.json')) continue;
    let e;
    try {
      e = await legacy.read(name);
    } catch {
      continue; // unreadable: the atomic writer never leaves a torn file, so this is foreign; leave it alone
    }
    if (!e?.hash) continue;
    load(e);
    log.append(entries.get(e.hash));
    migrated.push(name);
    if (sync && entries.get(e.hash).acked) staleRows.push(e.hash);
  }
  if (migrated.length) {
    await log.compactNow(); // durable in the log before the old files go
    await Promise.all(migrated.map((name) => legacy.remove(name))); // one shared directory fsync
  }
  // Not awaited (the daemon is not listening yet at open: it answers once the worker runs): a failure only leaves
  // the row for the next open.
  for (const hash of staleRows) sync.push(storeKey(hash), null).catch(() => {});

  const unacked = () => [...entries.values()].filter((e) => !e.acked);
  const refEntries = (ref) => [...(byRef.get(ref) ?? [])].map((h) => entries.get(h)).filter(Boolean);
  const wake = () => {
    if (unackedCount >= maxUnacked) return;
    const ws = waiters;
    waiters = [];
    for (const resolve of ws) resolve();
  };

  // Pruning sorts every tombstone: done at open, then only once the cap is well exceeded or hourly.
  let lastPrune = 0;
  const pruneTombstones = (force = false) => {
    if (!force && tombCount < MAX_TOMBSTONES + 500 && now() - lastPrune < 3600 * 1000) return;
    lastPrune = now();
    const tombs = [...entries.values()].filter((e) => e.acked).sort((a, b) => a.acked - b.acked);
    const cutoff = now() - TOMBSTONE_MS;
    tombs.forEach((e, i) => {
      if (e.acked < cutoff || i < tombs.length - MAX_TOMBSTONES) {
        drop(e);
        log.forget(e.hash); // gone from the log at its next compaction
      }
    });
  };
  pruneTombstones(true);

  /** The CB:message listener: runs synchronously when the stanza arrives, before Baileys reaches decrypt. */
  const noteStanza = (node) => {
    if (!Array.isArray(node?.content)) return;
    for (const child of node.content) {
      if (child?.tag !== 'enc' || !(child.content instanceof Uint8Array)) continue;
      envelopes.set(hashOf(child.attrs.type, child.content), { attrs: { ...node.attrs }, enc: { ...child.attrs } });
    }
    // A stanza that never reaches decrypt (a plaintext ad, a refused one) leaves its envelope here: keep the newest.
    while (envelopes.size > 1000) envelopes.delete(envelopes.keys().next().value);
  };

  /** Journal one decrypt. Returns {gate, done}: `gate` is what the ratchet's local rename waits for, `done` what
   *  the decrypt waits for before it returns (the entry durable: the log's fdatasync, or the store's commit). */
  const record = (hash, pt) => {
    const envelope = envelopes.get(hash) ?? null;
    envelopes.delete(hash);
    const sk = envelope ? stanzaKey(envelope.attrs) : hash;
    const ref = byStanza.get(sk) ?? hash;
    byStanza.set(sk, ref);
    if (envelope?.attrs?.id) byWaId.set(envelope.attrs.id, ref);
    const entry = { hash, ref, msgKey: sk, seq: ++seq, at: now(), envelope, pt: Buffer.from(pt).toString('base64') };
    // Cluster mode: the local log is a cache (not synced) and the entry's durable copy is the store's row. The row
    // is pushed deferred: it leaves with the ratchet's own write (the session file, pushed once written locally),
    // so entry and ratchet commit in ONE fenced transaction (atomic: journal -> ratchet holds), one round trip per
    // decrypt instead of two. `through` releases it if the transaction wrote nothing.
    const local = log.append(entry, !sync);
    const stored = sync ? sync.push(storeKey(hash), JSON.stringify(entry), { defer: true }) : null;
    const done = (async () => {
      try {
        await Promise.all([local, stored]);
      } catch (err) {
        onWriteError(err);
        // onWriteError (the worker: fatal auth_write_failed) ends the process. Never return: a throw here would make
        // Baileys answer with an error ack, and the server drops what it gets an ack for.
        await new Promise(() => {});
      }
      put(entry);
      writes += 1;
      if (killAfterWrites && writes >= killAfterWrites) process.kill(process.pid, 'SIGKILL'); // test hook (b)
    })();
    // single host: the ratchet is renamed after the fdatasync; cluster: after the local append (the store orders it)
    return { gate: sync ? local.then(() => {}, () => new Promise(() => {})) : done, done };
  };

  /** The plaintext for a stanza already journaled (its receipt never reached the server), else undefined. */
  const replayed = (hash) => {
    const e = entries.get(hash);
    if (!e) return undefined;
    const id = envelopes.get(hash)?.attrs?.id ?? e.envelope?.attrs?.id; // a tombstone keeps no envelope
    envelopes.delete(hash);
    if (id) byWaId.set(id, e.ref);
    return e.acked ? EMPTY_PLAINTEXT : Buffer.from(e.pt, 'base64');
  };

  const waitForRoom = async () => {
    while (unackedCount >= maxUnacked) await new Promise((resolve) => waiters.push(resolve));
  };

  /** Wraps a Baileys signal repository so decrypts go through the journal. */
  const wrapRepository = (inner, keys) => {
    const through = (type, ciphertext, jid, decrypt) => async () => {
      const hash = hashOf(type, ciphertext);
      const known = replayed(hash);
      if (known !== undefined) return known;
      await waitForRoom();
      // Nested into the same transaction as inner's own, so the ratchet is committed when it ends. The commit's
      // writes (session, a pkmsg's pre-key removal) start at once but rename/unlink only after the journal entry is
      // durable (commitGate, auth-files.mjs): journal -> ratchet commit, with the two fsyncs overlapping. In
      // cluster mode the store's transaction takes both (record()).
      const held = {};
      let rec = null;
      return commitGate.run(held, async () => {
        const pt = await keys.transaction(async () => {
          const plain = await decrypt();
          rec = record(hash, plain);
          held.gate = rec.gate;
          return plain;
        }, jid);
        sync?.release();
        await rec.done;
        return pt;
      });
    };
    return new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === 'decryptMessage') {
          return (args) => through(args.type, args.ciphertext, args.jid, () => target.decryptMessage(args))();
        }
        if (prop === 'decryptGroupMessage') {
          return (args) => through('skmsg', args.msg, args.group, () => target.decryptGroupMessage(args))();
        }
        return Reflect.get(target, prop, receiver);
      },
    });
  };

  /** The ref of an upserted message and whether to emit it (false: acked already, or already emitted). */
  const refFor = (msg) => {
    // A CIPHERTEXT stub is a copy that did not decrypt: nothing of it is journaled. Its resend (same WhatsApp id)
    // may be journaled before Baileys upserts the stub (both wait in its offline buffer); taking the resend's ref
    // here would mark it emitted, drop the resend's own upsert and let the stub's ack tombstone the text.
    if (msg?.messageStubType === STUB_CIPHERTEXT) return { ref: keyRef(msg?.key), emit: true, journaled: false };
    const ref = byWaId.get(msg?.key?.id);
    if (ref === undefined) return { ref: keyRef(msg?.key), emit: true, journaled: false };
    const es = refEntries(ref);
    if (!es.length || es.some((e) => e.acked) || emitted.has(ref)) return { ref, emit: false, journaled: true };
    emitted.add(ref);
    return { ref, emit: true, journaled: true };
  };

  /** Unacked messages in journal order, one per ref: what `replay` and a start re-emit. */
  const pending = () => {
    const seen = new Map();
    for (const e of unacked().sort((a, b) => (a.seq - b.seq) || (a.at - b.at))) {
      if (!seen.has(e.ref)) seen.set(e.ref, []);
      seen.get(e.ref).push(e);
    }
    return [...seen.entries()].map(([ref, es]) => {
      emitted.add(ref);
      return { ref, entries: es };
    });
  };

  let releaseTimer = null;
  const ack = async (refs) => {
    const writes_ = [];
    const t = now();
    for (const ref of refs) {
      emitted.delete(ref);
      for (const e of refEntries(ref)) {
        if (e.acked) continue;
        const tomb = { hash: e.hash, ref: e.ref, msgKey: e.msgKey, at: e.at, acked: t };
        put(tomb);
        byStanza.delete(e.msgKey); // only needed while its enc children are decrypted
        // Not fsynced: losing it to a power cut only re-emits the message (deduplicated by its event id).
        writes_.push(log.append(tomb)); // one flush for the whole ack: the same promise
        // Not awaited either: a lost delete re-emits the message at the next owner's start, under its event id.
        // Deferred: it rides along with the next decrypt's transaction, or leaves within DELETE_DELAY_MS.
        if (sync) sync.push(storeKey(e.hash), null, { defer: true }).catch(() => {});
      }
    }
    if (sync && writes_.length && !releaseTimer) {
      releaseTimer = setTimeout(() => { releaseTimer = null; sync.release(); }, DELETE_DELAY_MS);
      releaseTimer.unref?.();
    }
    wake();
    pruneTombstones();
    // byWaId maps an upsert to its ref, also for a late redelivery: keep the newest ids only.
    while (byWaId.size > 10000) byWaId.delete(byWaId.keys().next().value);
    for (const p of new Set(writes_)) await p.catch((err) => onWriteError(err));
  };

  return {
    noteStanza, wrapRepository, refFor, pending, ack,
    flush: () => { sync?.release(); return log.flush(); }, // at stop: the deferred deletes leave now
    close: log.close,
    get unacked() { return unackedCount; },
    get size() { return entries.size; },
  };
}
