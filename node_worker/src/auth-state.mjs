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
//   - a creds.json that exists but cannot be parsed (empty, truncated, not JSON) is NOT replaced by
//     fresh creds: that would silently throw away the linked device and show a new QR. We throw
//     AuthCorruptError instead (the worker reports `auth_corrupt` and exits 1; an operator or the daemon
//     decides whether to archive the directory and re-pair). A corrupt *key* file is reported through
//     onCorruptKey and read as missing, like stock: losing one session/pre-key is recoverable by the
//     Signal protocol (retry receipts), losing creds is not.
import { initAuthCreds, proto } from '@whiskeysockets/baileys';
import { makeAuthFiles, prepareDir } from './auth-files.mjs';

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
          tasks.push(value ? files.write(value, file) : files.remove(file));
        }
      }
      await Promise.all(tasks);
    },
  };
}

export async function useAtomicMultiFileAuthState(folder, {
  onCorruptKey = () => {},
  onWriteError = () => {},
  maxConcurrentWrites = 32,
  sync = null,
} = {}) {
  await prepareDir(folder);
  const files = makeAuthFiles(folder, { onWriteError, maxConcurrentWrites, onDurable: sync ? sync.push : null });
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
  };
}
