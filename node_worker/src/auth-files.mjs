// The file store under the auth state (auth-state.mjs): one JSON file per key, written atomically and durably,
// operations on one file strictly in call order. Knows nothing about Baileys except its JSON encoding.
//
//   - every write: temp file in the same directory (so rename cannot cross a filesystem), fsync, rename over the
//     target, fsync of the directory (so the rename itself survives a power cut). A reader, or the next process
//     after SIGKILL, sees the old or the new file, never a torn one. Temp files left by a killed writer are
//     deleted when the store is opened (the tenant lock guarantees no other live writer).
//   - operations on one file run in call order (write/remove/read); a read waits for the writes queued before
//     it. Writes queued behind an in-flight write of the same file are coalesced into one (the data is
//     serialised when the write starts, as stock useMultiFileAuthState does inside its mutex).
//   - new files are created with mode 0600 (they hold private keys).
//   - onDurable(name, text|null) (cluster mode, state-sync.mjs): called once a write/remove is durable, in the file's
//     order; the write's promise then also waits for the promise it returns (the daemon's commit), outside the
//     file's queue.
//   - a write or remove made inside commitGate.run({gate}, ...) waits for `gate` (a promise) before its rename or
//     unlink; the temp file is written and fsynced meanwhile (with onDurable, cluster mode: not fsynced, the
//     store's commit is its durable copy). The decrypt journal (journal.mjs) uses it so the
//     ratchet commit of a decrypt overlaps the journal's fdatasync yet becomes visible only after it.
//   - writeNow() does the same steps synchronously: the file is durable when it returns, before any other code
//     runs (creds.json: Baileys sends the pair-success reply right after emitting creds.update; README "Creds").
import { open, rename, readFile, unlink, mkdir, stat, readdir } from 'node:fs/promises';
import { openSync, writeFileSync, fsyncSync, closeSync, renameSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { AsyncLocalStorage } from 'node:async_hooks';
import { BufferJSON } from '@whiskeysockets/baileys';

/** Stock Baileys' file name escaping ('/' -> '__', ':' -> '-'), so stock and our directories are the same. */
export const fixFileName = (file) => file?.replace(/\//g, '__')?.replace(/:/g, '-');

const TMP_RE = /^\..+\.tmp-\d+-\d+$/;

/** {gate: Promise} for the writes and removes made in its context (header). `gate` may be set after run() began:
 *  it is read when the write is queued. */
export const commitGate = new AsyncLocalStorage();
const gateNow = () => commitGate.getStore()?.gate;

/** A tiny counting semaphore: caps open temp files (812 pre-keys are written at once on first login). */
export function makeLimiter(max) {
  let active = 0;
  const waiting = [];
  return async (fn) => {
    if (active >= max) await new Promise((resolve) => waiting.push(resolve));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      waiting.shift()?.();
    }
  };
}

/** Group commit for directory fsyncs: a rename is durable once a directory fsync that *started after* it has
 *  completed. Concurrent writers share one fsync instead of issuing 812 of them. Returns syncDir(). */
export function makeDirSync(folder) {
  let running = null;
  let next = null;
  const run = async () => {
    const fh = await open(folder, 'r');
    try { await fh.sync(); } finally { await fh.close(); }
  };
  const start = () => {
    running = run().finally(() => { running = null; });
    return running;
  };
  return () => {
    if (next) return next;
    if (!running) return start();
    next = running.catch(() => {}).then(() => {
      next = null;
      return start();
    });
    return next;
  };
}

/** Per-path FIFO of async operations, plus the set of writes/removes not yet finished (what flush() awaits). */
export function makeFileQueue() {
  const tails = new Map(); // path -> promise of the last queued operation on that path
  const pending = new Set();
  const enqueue = (path, fn) => {
    const prev = tails.get(path) ?? Promise.resolve();
    const next = prev.catch(() => {}).then(fn);
    tails.set(path, next);
    next.catch(() => {}).finally(() => { if (tails.get(path) === next) tails.delete(path); });
    return next;
  };
  const track = (p) => {
    pending.add(p);
    p.catch(() => {}).finally(() => pending.delete(p));
    return p;
  };
  const flush = async () => {
    while (pending.size) await Promise.allSettled([...pending]);
  };
  return { enqueue, track, flush, get pending() { return pending.size; } };
}

/** Temp file, fsync, rename, directory fsync: all synchronous. */
function writeAtomicSync(folder, filePath, tmp, text) {
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeFileSync(fd, text, 'utf8');
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, filePath);
  } catch (err) {
    try { unlinkSync(tmp); } catch { /* already gone */ }
    throw err;
  }
  const dir = openSync(folder, 'r');
  try { fsyncSync(dir); } finally { closeSync(dir); }
}

/** Create the directory (0700) if needed and delete temp files a killed writer left behind. */
export async function prepareDir(folder) {
  const info = await stat(folder).catch(() => null);
  if (info && !info.isDirectory()) throw new Error(`${folder} is not a directory`);
  if (!info) await mkdir(folder, { recursive: true, mode: 0o700 });
  for (const name of await readdir(folder)) {
    if (TMP_RE.test(name)) await unlink(join(folder, name)).catch(() => {});
  }
}

/**
 * The store: write(value, file, {durable = true}) (durable false: atomic but not fsynced, for data whose loss after a
 * power cut only costs a redo, e.g. journal tombstones), remove(file), read(file) -> value | null (throws with `corrupt: true` when the
 * file cannot be read or parsed), writeNow(value, file) (synchronous; throws), flush(), pending. Write/remove
 * failures also go to onWriteError(err, file). A file written with writeNow must not also go through write/remove:
 * an older queued write renamed after it would undo it.
 */
export function makeAuthFiles(folder, { onWriteError = () => {}, maxConcurrentWrites = 32, onDurable = null,
  adopt = null } = {}) {
  const limit = makeLimiter(maxConcurrentWrites);
  const queue = makeFileQueue();
  const syncDir = makeDirSync(folder);
  const queuedWrite = new Map(); // path -> the last queued, not yet started write (for coalescing)
  let seq = 0;
  // The hook's promise rides in an array: returned bare from the queued operation it would hold the file's queue.
  const toStore = (name, text) => (onDurable ? [onDurable(name, text)] : null);
  const settled = (p) => p.then((r) => r?.[0]);

  const writeAtomic = async (filePath, name, text, durable = true, gate = null) => {
    const tmp = join(folder, `.${name}.tmp-${process.pid}-${++seq}`);
    // adopt(text): a temp file in this folder already holding exactly these bytes, fsynced (pre-keys staged while the
    // QR is shown, auth-state.mjs), or null. Renaming it is this write minus the file creation and its fsync. Never
    // under a commit gate (journal.mjs): a gated write must not become visible before its gate, so it takes the slow path.
    const staged = durable && !gate && adopt ? adopt(text) : null;
    if (staged && await rename(staged, filePath).then(() => true, () => false)) return syncDir();
    await limit(async () => {
      const fh = await open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(text, 'utf8');
        if (durable) await fh.sync();
      } finally {
        await fh.close();
      }
    });
    try {
      if (gate) await gate;
      await rename(tmp, filePath);
    } catch (err) {
      await unlink(tmp).catch(() => {});
      throw err;
    }
    if (durable) await syncDir();
  };

  const write = (data, file, { durable: wanted = true } = {}) => {
    const name = fixFileName(file);
    const filePath = join(folder, name);
    const queued = queuedWrite.get(filePath);
    const gate = gateNow();
    // A decrypt's ratchet write in cluster mode (gated, with the store hook): the store's transaction, which also
    // holds the journal entry, is its durable copy; a crash of this process keeps the page cache, and after a power
    // cut the next spawn rebuilds the dir from the store. So no local fsyncs on the per-message path.
    const durable = wanted && !(gate && onDurable);
    if (queued) {
      // Not started yet: the newest data replaces it, one write instead of two, order unchanged.
      queued.data = data;
      queued.durable ||= durable;
      if (gate) queued.gate = queued.gate ? Promise.all([queued.gate, gate]) : gate;
      return queued.promise;
    }
    const op = { data, durable, gate, promise: null };
    op.promise = queue.track(settled(queue.enqueue(filePath, async () => {
      if (queuedWrite.get(filePath) === op) queuedWrite.delete(filePath);
      const text = JSON.stringify(op.data, BufferJSON.replacer);
      await writeAtomic(filePath, name, text, op.durable, op.gate);
      return toStore(name, text);
    })));
    queuedWrite.set(filePath, op);
    op.promise.catch((err) => onWriteError(err, file));
    return op.promise;
  };

  const remove = (file) => {
    const name = fixFileName(file);
    const filePath = join(folder, name);
    queuedWrite.delete(filePath); // a later write must not be merged into one queued before this remove
    const gate = gateNow();
    const p = queue.track(settled(queue.enqueue(filePath, async () => {
      if (gate) await gate;
      try {
        await unlink(filePath);
      } catch (err) {
        if (err.code !== 'ENOENT') throw err;
        return null; // nothing to remove: the store matches the directory at each spawn (materialized)
      }
      if (!(gate && onDurable)) await syncDir(); // as for write(): a decrypt's removal in cluster mode
      return toStore(name, null);
    })));
    p.catch((err) => onWriteError(err, file));
    return p;
  };

  const read = (file) => {
    const filePath = join(folder, fixFileName(file));
    return queue.enqueue(filePath, async () => {
      let text;
      try {
        text = await readFile(filePath, { encoding: 'utf-8' });
      } catch (err) {
        if (err.code === 'ENOENT') return null;
        throw Object.assign(err, { corrupt: true });
      }
      try {
        return JSON.parse(text, BufferJSON.reviver);
      } catch (err) {
        throw Object.assign(err, { corrupt: true });
      }
    });
  };

  /** Returns the text written (cluster mode sends it to the daemon right after). */
  const writeNow = (data, file) => {
    const name = fixFileName(file);
    const text = JSON.stringify(data, BufferJSON.replacer);
    writeAtomicSync(folder, join(folder, name), join(folder, `.${name}.tmp-${process.pid}-${++seq}`), text);
    return text;
  };

  return { write, remove, read, writeNow, flush: queue.flush, get pending() { return queue.pending; } };
}
