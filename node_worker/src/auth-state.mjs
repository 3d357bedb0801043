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
//   - every write is atomic and durable: temp file in the same directory (so rename cannot cross a
//     filesystem), fsync, rename over the target, fsync of the directory (so the rename itself survives
//     a power cut). A reader, or the next process after SIGKILL, sees the old or the new file, never a
//     torn one. Leftover temp files from a killed writer are deleted at the next start.
//   - operations on one file run strictly in call order (write/remove/read); a read waits for the
//     writes queued before it. Writes queued behind an in-flight write of the same file are coalesced
//     into one (the data is serialised when the write starts, as stock does inside its mutex).
//   - `flush()` resolves when every queued write/remove has finished; the worker awaits it before exit.
//   - a creds.json that exists but cannot be parsed (empty, truncated, not JSON) is NOT replaced by
//     fresh creds: that would silently throw away the linked device and show a new QR. We throw
//     AuthCorruptError instead (the worker reports `auth_corrupt` and exits 1; an operator or the daemon
//     decides whether to archive the directory and re-pair). A corrupt *key* file is reported through
//     onCorruptKey and read as missing, like stock: losing one session/pre-key is recoverable by the
//     Signal protocol (retry receipts), losing creds is not.
//   - new files are created with mode 0600 (they hold private keys).
import { open, rename, readFile, unlink, mkdir, stat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { BufferJSON, initAuthCreds, proto } from '@whiskeysockets/baileys';

export const fixFileName = (file) => file?.replace(/\//g, '__')?.replace(/:/g, '-');

const TMP_RE = /^\..+\.tmp-\d+-\d+$/;

export class AuthCorruptError extends Error {
  constructor(file, cause) {
    super(`${file} exists but is not valid auth JSON (${cause?.message ?? cause}); refusing to start with fresh credentials`);
    this.code = 'auth_corrupt';
    this.file = file;
  }
}

/** A tiny counting semaphore: caps open temp files (812 pre-keys are written at once on first login). */
function makeLimiter(max) {
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

export async function useAtomicMultiFileAuthState(folder, {
  onCorruptKey = () => {},
  onWriteError = () => {},
  maxConcurrentWrites = 32,
} = {}) {
  const info = await stat(folder).catch(() => null);
  if (info && !info.isDirectory()) throw new Error(`${folder} is not a directory`);
  if (!info) await mkdir(folder, { recursive: true, mode: 0o700 });

  // Temp files can only be left by a writer that was killed between open and rename; the tenant lock
  // guarantees no other live writer, so they are garbage.
  for (const name of await readdir(folder)) {
    if (TMP_RE.test(name)) await unlink(join(folder, name)).catch(() => {});
  }

  const limit = makeLimiter(maxConcurrentWrites);
  const tails = new Map();      // path -> promise of the last queued operation on that path
  const queuedWrite = new Map(); // path -> the last queued, not yet started write (for coalescing)
  const pending = new Set();     // every write/remove not yet finished (what flush() waits for)
  let seq = 0;

  // Group commit for directory fsyncs: a rename is durable once a directory fsync that *started after*
  // it has completed. Concurrent writers share one fsync instead of issuing 812 of them.
  let dirSyncRunning = null;
  let dirSyncNext = null;
  const runDirSync = async () => {
    const fh = await open(folder, 'r');
    try { await fh.sync(); } finally { await fh.close(); }
  };
  const syncDir = () => {
    if (dirSyncNext) return dirSyncNext;
    if (!dirSyncRunning) {
      dirSyncRunning = runDirSync().finally(() => { dirSyncRunning = null; });
      return dirSyncRunning;
    }
    dirSyncNext = dirSyncRunning.catch(() => {}).then(() => {
      dirSyncNext = null;
      dirSyncRunning = runDirSync().finally(() => { dirSyncRunning = null; });
      return dirSyncRunning;
    });
    return dirSyncNext;
  };

  /** Queue fn after every earlier operation on the same path. */
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

  const writeAtomic = async (filePath, name, text) => {
    const tmp = join(folder, `.${name}.tmp-${process.pid}-${++seq}`);
    await limit(async () => {
      const fh = await open(tmp, 'wx', 0o600);
      try {
        await fh.writeFile(text, 'utf8');
        await fh.sync();
      } finally {
        await fh.close();
      }
      try {
        await rename(tmp, filePath);
      } catch (err) {
        await unlink(tmp).catch(() => {});
        throw err;
      }
    });
    await syncDir();
  };

  const writeData = (data, file) => {
    const name = fixFileName(file);
    const filePath = join(folder, name);
    const queued = queuedWrite.get(filePath);
    if (queued) {
      // Not started yet: the newest data replaces it, one write instead of two, order unchanged.
      queued.data = data;
      return queued.promise;
    }
    const op = { data, promise: null };
    op.promise = track(enqueue(filePath, async () => {
      if (queuedWrite.get(filePath) === op) queuedWrite.delete(filePath);
      await writeAtomic(filePath, name, JSON.stringify(op.data, BufferJSON.replacer));
    }));
    queuedWrite.set(filePath, op);
    op.promise.catch((err) => onWriteError(err, file));
    return op.promise;
  };

  const removeData = (file) => {
    const filePath = join(folder, fixFileName(file));
    queuedWrite.delete(filePath); // a later write must not be merged into one queued before this remove
    const p = track(enqueue(filePath, async () => {
      try {
        await unlink(filePath);
      } catch (err) {
        if (err.code !== 'ENOENT') throw err;
        return;
      }
      await syncDir();
    }));
    p.catch((err) => onWriteError(err, file));
    return p;
  };

  /** Returns the parsed value, null when missing; throws {corrupt:true} errors for unparsable files. */
  const readData = (file) => {
    const filePath = join(folder, fixFileName(file));
    return enqueue(filePath, async () => {
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

  let creds;
  try {
    creds = (await readData('creds.json')) || initAuthCreds();
  } catch (err) {
    throw new AuthCorruptError('creds.json', err);
  }

  const readKey = async (file) => {
    try {
      return await readData(file);
    } catch (err) {
      onCorruptKey(file, err);
      return null;
    }
  };

  return {
    state: {
      creds,
      keys: {
        get: async (type, ids) => {
          const data = {};
          await Promise.all(ids.map(async (id) => {
            let value = await readKey(`${type}-${id}.json`);
            if (type === 'app-state-sync-key' && value) {
              value = proto.Message.AppStateSyncKeyData.fromObject(value);
            }
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
              tasks.push(value ? writeData(value, file) : removeData(file));
            }
          }
          await Promise.all(tasks);
        },
      },
    },
    saveCreds: () => writeData(creds, 'creds.json'),
    /** Resolves once every write/remove queued so far (and any queued while waiting) has settled. */
    flush: async () => {
      while (pending.size) await Promise.allSettled([...pending]);
    },
    get pendingWrites() { return pending.size; },
  };
}
