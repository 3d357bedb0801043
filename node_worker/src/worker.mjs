// baileys-supervisor worker: one tenant, one Baileys socket, one process lifetime.
// Speaks docs/protocol.md on stdin/stdout; logs pino JSON on stderr. It makes no restart decisions:
// when the socket closes it flushes auth, reports the close and exits; the daemon decides what follows.
//
// Start-up, in order: settings (bad env: one `error`, exit 2) -> log -> commands -> Baileys + the verification
// patch + the decrypt fix (signal-decrypt.mjs) -> `hello` + heartbeats -> [standby: wait for `go`] -> auth state
// -> socket (socket.mjs).
import { readFileSync } from 'node:fs';
import { PROTOCOL_VERSION, makeEmitter, nextHeartbeatDelay } from './protocol.mjs';
import { EnvError, parseEnv } from './env.mjs';
import { makeLogger } from './logging.mjs';
import { installLifecycle, installProcessHandlers } from './lifecycle.mjs';
import { listenForCommands } from './commands.mjs';
import { resolveVersion } from './version.mjs';
import { dropUnfinishedCodePairing } from './creds.mjs';
import { openSocket, restartInProcess } from './socket.mjs';
import { startKeyPairPool } from './prekey-pool.mjs';
import { baileysLibsignal, decryptOnCopies } from './signal-decrypt.mjs';

const WORKER_NAME = 'baileys-supervisor-worker/0.1.0';
const baileysEntry = import.meta.resolve('@whiskeysockets/baileys');

function deferred() {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  return { promise, resolve };
}

/** Everything the worker's parts share: its settings, the event writer, the socket and auth once they exist, and
 *  how far it has got. lifecycle.mjs adds shutdown/fatal/finalExit/flushAuth. */
function makeWorkerState() {
  const w = {
    startedAt: Date.now(),
    settings: null, logger: null, baileys: null, sock: null, auth: null, sender: null, journal: null, isOpen: false,
    stateSync: null, // cluster mode's write-through to the daemon (state-sync.mjs)
    keyPool: null, // a standby's pre-generated key pairs (prekey-pool.mjs), dropped once the socket is open
    exiting: false, shutdownStarted: false, exitCode: 0, stopReason: null, heartbeatTimer: null,
    isNewLogin: false, verificationFailed: false, socketClosed: false,
    version: null, // the WhatsApp Web version every socket of this process uses
    reconnected: false, // the one in-process reconnect after the scan's 515 happened (socket.mjs)
    sockReady: deferred(), // the socket exists (commands that need it wait for this)
    firstQr: deferred(), // the registration handshake is done (a pairing code can be asked for)
    // Standby (BSUP_STANDBY=1): started ahead of need, e.g. while a QR is shown, so the restart WhatsApp demands
    // after a scan (515) does not wait for Node start-up and the Baileys import (~0.9 s). It does everything up to
    // `hello`, then waits for `go`: until then it has read no auth file and opened no socket.
    go: deferred(), goReceived: false,
  };
  // EPIPE on stdout: the daemon is gone. Same as stdin EOF.
  w.emitter = makeEmitter(process.stdout, {
    onBroken: () => (w.shutdown ? w.shutdown('stdout closed', 0) : process.exit(0)),
  });
  w.emit = w.emitter.emit;
  return w;
}

function loadSettings(w) {
  try {
    return parseEnv(process.env);
  } catch (err) {
    if (!(err instanceof EnvError)) throw err;
    // Exit code 2 = bad environment (docs/protocol.md); this error is the only line we write.
    w.emit({ type: 'error', code: 'bad_env', message: err.message, fatal: true });
    process.exit(2);
  }
}

/** Without a working signature check we would accept any server: then do not connect at all. */
async function installVerification(w) {
  const { loadLibsignalCurve, installVerifyPatch } = await import('./verify.mjs');
  try {
    installVerifyPatch(w.baileys.Curve, loadLibsignalCurve(baileysEntry), {
      onReject: () => {
        w.verificationFailed = true;
        w.logger.error('a server signature did not verify; the connection will be refused');
      },
    });
    return true;
  } catch (err) {
    w.emit({ type: 'error', code: 'server_verification_failed', message: String(err?.message ?? err), fatal: true });
    w.finalExit(1);
    return false;
  }
}

function sayHello(w, version) {
  const baileysVersion = JSON.parse(readFileSync(new URL('../package.json', baileysEntry), 'utf8')).version;
  // restartInProcess: the scan's 515 will not end this process (socket.mjs), so the daemon needs no standby for it
  w.emit({ type: 'hello', protocol: PROTOCOL_VERSION, pid: process.pid, worker: WORKER_NAME,
    baileys: baileysVersion, waVersion: version, restartInProcess: restartInProcess() });
  const heartbeat = () => {
    w.emit({ type: 'heartbeat', rss: process.memoryUsage.rss(), uptimeMs: Date.now() - w.startedAt });
    if (!w.shutdownStarted) w.heartbeatTimer = setTimeout(heartbeat, nextHeartbeatDelay(w.settings.heartbeatMs));
  };
  w.heartbeatTimer = setTimeout(heartbeat, nextHeartbeatDelay(w.settings.heartbeatMs));
}

/** Loads the auth directory; a corrupt creds.json is fatal (node_worker/README.md, "Decisions"). */
async function openAuth(w) {
  const { useAtomicMultiFileAuthState, AuthCorruptError } = await import('./auth-state.mjs');
  if (w.settings.stateSync) { // cluster mode: writes go through the daemon's fenced store (state-sync.mjs)
    const { makeStateSync } = await import('./state-sync.mjs');
    w.stateSync = makeStateSync(w.emit);
  }
  try {
    w.auth = await useAtomicMultiFileAuthState(w.settings.authDir, {
      sync: w.stateSync,
      onCorruptKey: (file, err) => {
        w.emit({ type: 'error', code: 'auth_corrupt_key', fatal: false,
          message: `${file} is unreadable (${err.message}); treated as missing` });
      },
      onWriteError: (err, file) => {
        if (!w.shutdownStarted) w.fatal('auth_write_failed', `writing ${file} failed: ${err.message}`);
      },
    });
  } catch (err) {
    const code = err instanceof AuthCorruptError ? 'auth_corrupt' : 'auth_load_failed';
    w.emit({ type: 'error', code, message: String(err?.message ?? err), fatal: true });
    w.finalExit(1);
    return false;
  }
  try {
    const { makeSender } = await import('./send.mjs');
    w.sender = makeSender(w);
    await w.sender.open();
  } catch (err) {
    w.emit({ type: 'error', code: 'auth_load_failed', message: `sent store: ${err?.message ?? err}`, fatal: true });
    w.finalExit(1);
    return false;
  }
  const { openJournal, journalOptions } = await import('./journal.mjs');
  const { enabled, ...journalOpts } = journalOptions();
  if (!enabled) w.killAfterDecrypts = journalOpts.killAfterWrites; // test hook without the journal (journal.mjs)
  if (enabled) {
    try {
      w.journal = await openJournal(w.settings.authDir, { ...journalOpts, sync: w.stateSync,
        onWriteError: (err) => { if (!w.shutdownStarted) w.fatal('auth_write_failed', `journal write failed: ${err.message}`); } });
    } catch (err) {
      w.emit({ type: 'error', code: 'auth_load_failed', message: `journal: ${err?.message ?? err}`, fatal: true });
      w.finalExit(1);
      return false;
    }
  }
  if (dropUnfinishedCodePairing(w.auth.state.creds)) {
    w.logger.warn('creds hold an unfinished pairing-code attempt (no pair-success); registering again');
  }
  return true;
}

async function main(w) {
  w.baileys = await import('@whiskeysockets/baileys');
  if (!await installVerification(w)) return;
  decryptOnCopies(baileysLibsignal(baileysEntry)); // before any decrypt: a failed attempt must not ratchet a session
  const version = await resolveVersion(w.settings.version, w.baileys, w.logger);
  sayHello(w, version);
  if (w.shutdownStarted) return; // EOF/SIGTERM/stop during start-up: shutdown() exits
  if (w.settings.standby) {
    // shutdown() exits the process; a standby that is never promoted ends here, having touched nothing.
    // Meanwhile it makes the key pairs of the first login's pre-key upload (idle CPU, nothing written).
    w.keyPool = startKeyPairPool(w.baileys.Curve, w.baileys.INITIAL_PREKEY_COUNT);
    await w.go.promise;
    w.keyPool.stop();
    if (w.shutdownStarted) return;
  }
  if (!await openAuth(w) || w.shutdownStarted) return;
  w.version = version;
  openSocket(w, version);
}

const w = makeWorkerState();
w.settings = loadSettings(w);
w.logger = makeLogger(w.settings, baileysEntry);
installLifecycle(w);
installProcessHandlers(w);
listenForCommands(w);
main(w).catch((err) => {
  w.logger.fatal({ err }, 'worker start-up failed');
  w.emit({ type: 'error', code: 'startup_failed', message: String(err?.stack ?? err), fatal: true });
  w.finalExit(1);
});
