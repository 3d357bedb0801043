// Crash-safe replacement for Baileys' useMultiFileAuthState (cause 2 in the seed: a worker killed during
// a write left creds.json empty and the next start silently asked for a new QR).
//
// File compatibility with lib/Utils/use-multi-file-auth-state.js (7.0.0-rc14), so existing
// storage/whatsapp/<tenant>/auth directories load unchanged and can still be read by stock Baileys:
//   - same names: `creds.json` and `<category>-<id>.json` with fixFileName ('/' -> '__', ':' -> '-')
//   - same bytes: JSON.stringify(value, BufferJSON.replacer); read with JSON.parse(text, BufferJSON.reviver)
//   - app-state-sync-key values are revived with proto.Message.AppStateSyncKeyData.fromObject
//   - a missing key file is `null`; a missing creds.json means fresh creds (initAuthCreds)
// Differences, all deliberate:
//   - every write is atomic and durable, and one file's operations run in call order (auth-files.mjs).
//   - creds.json is written synchronously (`saveCredsNow()`; `saveCreds()` is the same behind a promise): it is
//     on disk, durably, before the code that emitted creds.update goes on. At pair-success that code sends the
//     reply that makes the phone show the new device (node_worker/README.md, "Creds before the pairing reply").
//   - `flush()` resolves when every queued write/remove has finished; the worker awaits it before exit.
//   - cluster mode (`sync`, state-sync.mjs): every durable write/remove also goes to the daemon's fenced store, and
//     the promise Baileys awaits resolves only once the daemon committed it. creds.json cannot wait (written before
//     the pair-success reply): it is sent right after; saveCreds() and flush() wait for its commit.
//   - stagePreKey(pair) (the QR worker's key-pair pool, prekey-pool.mjs): while the QR is shown, each pre-generated
//     pair is written to a durable temp file; when Baileys later stores that very pair as a pre-key, the write renames
//     the temp file instead of creating and fsyncing a new one (makeStager below). dropStaged() deletes the unused.
//   - a creds.json that exists but cannot be parsed (empty, truncated, not JSON) is NOT replaced by
//     fresh creds: that would silently throw away the linked device and show a new QR. We throw
//     AuthCorruptError instead (the worker reports `auth_corrupt` and exits 1; an operator or the daemon
//     decides whether to archive the directory and re-pair). A corrupt *key* file is reported through
//     onCorruptKey and read as missing, like stock: losing one session/pre-key is recoverable by the
//     Signal protocol (retry receipts), losing creds is not.
import { open, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { initAuthCreds, proto, BufferJSON } from '@whiskeysockets/baileys';
import { makeAuthFiles, makeLimiter, prepareDir } from './auth-files.mjs';

export { fixFileName } from './auth-files.mjs';

export class AuthCorruptError extends Error {
  constructor(file, cause) {
    super(`${file} exists but is not valid auth JSON (${cause?.message ?? cause}); refusing to start with fresh credentials`);
    this.code = 'auth_corrupt';
    this.file = file;
  }
}

async function loadCreds(files) {
  try {
    return (await files.read('creds.json')) || initAuthCreds();
  } catch (err) {
    throw new AuthCorruptError('creds.json', err);
  }
}

/** Baileys' SignalKeyStore over the files: get(type, ids) -> {id: value|null}, set({type: {id: value|null}}). */
function makeKeyStore(files, onCorruptKey) {
  const readKey = async (file) => {
    try {
      return await files.read(file);
    } catch (err) {
      onCorruptKey(file, err);
      return null;
    }
  };
  return {
    get: async (type, ids) => {
      const data = {};
      await Promise.all(ids.map(async (id) => {
        let value = await readKey(`${type}-${id}.json`);
        if (type === 'app-state-sync-key' && value) value = proto.Message.AppStateSyncKeyData.fromObject(value);
        data[id] = value;
      }));
      return data;
    },
    set: async (data) => {
      const tasks = [];
      for (const category in data) {
        for (const id in data[category]) {
          const value = data[category][id];
          const file = `${category}-${id}.json`;
          // Durable in cluster mode too, although the dir is a cache of the store: a promoted standby and the
          // in-process restart log in on it without a rebuild, and a non-durable write would not adopt a staged
          // pre-key (measured slower: docs/benchmarks.md "Tenant state in PostgreSQL vs files"). A decrypt's ratchet
          // write is the exception (auth-files.mjs: gated + store hook): its store transaction holds the journal entry.
          tasks.push(value ? files.write(value, file) : files.remove(file));
        }
      }
      await Promise.all(tasks);
    },
  };
}

/**
 * Pre-key files made ahead of the login (issue 12). A first login stores 812 fresh pre-keys before it uploads them;
 * measured, nearly all of that time is creating 812 files (open O_EXCL + write + fsync), not encoding or reading.
 * The pairs are made earlier, while the QR is shown (prekey-pool.mjs), so their bytes are known: stage(pair)
 * writes them to a temp file (named like auth-files' temp files, so those of a worker that exited before `open`,
 * e.g. killed or at a QR timeout, are deleted by the next worker's open), fsyncs it, and keeps text -> path. adopt(text) hands such a file to the write of the same bytes, which
 * renames it over the target and fsyncs the directory: the same atomic, durable write as before, without the create.
 * Keyed by the exact bytes, so a pair Baileys used for anything else, or a value staged too late, is simply written
 * the ordinary way. stop() (pair-success, with the pool's filling: measured, staging on during an instant scan's
 * login slowed its writes 1.3x) starts no new file; drop() (at `open`, when the pool is released) deletes the unused.
 */
function makeStager(folder, concurrency = 4) {
  const ready = new Map(); // text -> durable temp file with exactly that text
  const limit = makeLimiter(concurrency); // a few at a time: the QR worker's event loop and threadpool stay free
  let live = true; // false after drop(): nothing kept
  let accepting = true; // false after stop(): no new file started (the login needs the disk), finished ones kept
  let seq = 0;
  let adopted = 0;
  const stage = (value) => {
    if (!accepting) return Promise.resolve();
    const text = JSON.stringify(value, BufferJSON.replacer);
    const tmp = join(folder, `.pre-key-staged.tmp-${process.pid}-${++seq}`);
    return limit(async () => {
      if (!accepting) return;
      const fh = await open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(text, 'utf8');
        await fh.sync();
      } finally {
        await fh.close();
      }
      if (live) ready.set(text, tmp);
      else await unlink(tmp).catch(() => {});
    }).catch(() => unlink(tmp).catch(() => {})); // best effort: the ordinary write covers a pair not staged
  };
  const adopt = (text) => {
    const tmp = ready.get(text);
    if (tmp === undefined) return null;
    ready.delete(text); // one write per staged file
    adopted++;
    return tmp;
  };
  const stop = () => { accepting = false; };
  const drop = () => {
    live = false;
    accepting = false;
    const left = [...ready.values()];
    ready.clear();
    return Promise.all(left.map((tmp) => unlink(tmp).catch(() => {})));
  };
  return { stage, adopt, stop, drop, get size() { return ready.size; }, get adopted() { return adopted; } };
}

export async function useAtomicMultiFileAuthState(folder, {
  onCorruptKey = () => {},
  onWriteError = () => {},
  maxConcurrentWrites = 32,
  sync = null,
  stagePreKeys = process.env.BSUP_PREKEY_STAGE !== 'off', // off: for comparisons (bench/e2e_latency.py --variant)
} = {}) {
  await prepareDir(folder);
  const stager = stagePreKeys ? makeStager(folder) : null;
  const files = makeAuthFiles(folder, { onWriteError, maxConcurrentWrites, onDurable: sync ? sync.push : null,
    adopt: stager?.adopt });
  const creds = await loadCreds(files);
  const credsSent = new Set(); // creds.json commits not yet answered (flush waits for them)
  let lastCreds = Promise.resolve();
  const saveCredsNow = () => {
    let text;
    try {
      text = files.writeNow(creds, 'creds.json');
    } catch (err) {
      onWriteError(err, 'creds.json');
      throw err;
    }
    if (sync) {
      const p = sync.push('creds.json', text, { now: true });
      credsSent.add(p);
      p.catch((err) => onWriteError(err, 'creds.json')).finally(() => credsSent.delete(p));
      lastCreds = p;
    }
  };
  return {
    state: { creds, keys: makeKeyStore(files, onCorruptKey) },
    /** Durable when it returns; throws (after onWriteError) when the write failed. */
    saveCredsNow,
    saveCreds: async () => { saveCredsNow(); await lastCreds; },
    /** Resolves once every write/remove queued so far (and any queued while waiting) has settled. */
    flush: async () => {
      await files.flush();
      await Promise.allSettled([...credsSent]);
    },
    get pendingWrites() { return files.pending; },
    /** Write this key pair's bytes to a durable temp file now, for a later pre-key write of it (makeStager). */
    stagePreKey: (pair) => stager?.stage(pair) ?? Promise.resolve(),
    /** Start no new staged file; those written stay available to the writes. */
    stopStaging: () => stager?.stop(),
    /** Stop staging and delete the staged files no write took. */
    dropStaged: () => stager?.drop() ?? Promise.resolve(),
    get stagedPreKeys() { return stager?.size ?? 0; },
    /** How many writes renamed a staged file (logged at `open`: what staging saved). */
    get adoptedPreKeys() { return stager?.adopted ?? 0; },
  };
}
