// baileys-supervisor worker: one tenant, one Baileys socket, one process lifetime.
// Speaks docs/protocol.md on stdin/stdout; logs pino JSON on stderr. It makes no restart decisions:
// when the socket closes it flushes auth, reports the close and exits; the daemon decides what follows.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { format } from 'node:util';
import {
  PROTOCOL_VERSION, EnvError, CommandError, parseEnv, parseCommand, makeEmitter, makeLineSplitter,
  encodeMessageEvents, nextHeartbeatDelay,
} from './protocol.mjs';
import { startKeyPairPool } from './prekey-pool.mjs';

const startedAt = Date.now();
const WORKER_NAME = 'baileys-supervisor-worker/0.1.0';
/** How long a stop/EOF/SIGTERM waits for Baileys' own close before exiting anyway (after the flush). */
const CLOSE_WAIT_MS = 600;
/** A pairing code can only be requested once the registration handshake is done (first QR seen). */
const PAIRING_READY_WAIT_MS = 10000;
const VERSION_FETCH_TIMEOUT_MS = 3000;

let exiting = false;
const emitter = makeEmitter(process.stdout, {
  // EPIPE on stdout: the daemon is gone. Same as stdin EOF.
  onBroken: () => { shutdown('stdout closed', 0); },
});
const emit = emitter.emit;

// ---- settings -------------------------------------------------------------------------------------
let settings;
try {
  settings = parseEnv(process.env);
} catch (err) {
  if (!(err instanceof EnvError)) throw err;
  // Exit code 2 = bad environment (docs/protocol.md); this error is the only line we write.
  emit({ type: 'error', code: 'bad_env', message: err.message, fatal: true });
  process.exit(2);
}

// ---- logging: pino JSON on stderr, resolved from Baileys' own dependency tree ----------------------
const baileysEntry = import.meta.resolve('@whiskeysockets/baileys');
const requireFromBaileys = createRequire(baileysEntry);
const pino = requireFromBaileys('pino');
// sync: a log line written just before process.exit() must not be lost.
const logger = pino({ level: settings.logLevel, base: { pid: process.pid, tenant: settings.tenant } },
  pino.destination({ dest: 2, sync: true }));
// stdout belongs to the protocol. libsignal and friends call console.log/info (e.g. "Closing session");
// route every console method to the JSON log so no stray text reaches the daemon's protocol reader.
for (const [method, level] of [['log', 'info'], ['info', 'info'], ['debug', 'debug'], ['trace', 'trace'],
  ['warn', 'warn'], ['error', 'error']]) {
  console[method] = (...args) => logger[level]({ src: 'console' }, format(...args));
}

// ---- state ----------------------------------------------------------------------------------------
let sock = null;
let auth = null;
let heartbeatTimer = null;
let exitCode = 0;
let stopReason = null;
let isNewLogin = false;
let verificationFailed = false;
let socketClosed = false;
let resolveSockReady;
const sockReady = new Promise((r) => { resolveSockReady = r; });
// Standby (BSUP_STANDBY=1): started ahead of need, e.g. while a QR is shown, so the restart WhatsApp demands
// after a scan (515) does not wait for Node start-up and the Baileys import (~0.9 s). It does everything up to
// `hello`, then waits for `go`: until then it has read no auth file and opened no socket.
let resolveGo;
const goSignal = new Promise((r) => { resolveGo = r; });
let goReceived = false;
let resolveFirstQr;
const firstQr = new Promise((r) => { resolveFirstQr = r; });
let baileys = null;
let keyPool = null; // a standby's pre-generated key pairs (prekey-pool.mjs), dropped once the socket is open

function finalExit(code) {
  if (exiting) return;
  exiting = true;
  clearTimeout(heartbeatTimer);
  // stdout/stderr are written synchronously (pipes and files on Linux; pino sync destination).
  process.exit(code);
}

async function flushAuth() {
  if (!auth) return;
  try {
    await auth.flush();
  } catch (err) {
    emit({ type: 'error', code: 'auth_write_failed', message: String(err?.message ?? err), fatal: true });
    exitCode = 1;
  }
}

let shutdownStarted = false;
/** stop / stdin EOF / SIGTERM / fatal error: end the socket, flush, exit. The close handler exits when
 *  Baileys reports the close in time; otherwise we exit ourselves after CLOSE_WAIT_MS. */
async function shutdown(reason, code) {
  if (code > exitCode) exitCode = code;
  if (shutdownStarted) return;
  shutdownStarted = true;
  stopReason = reason;
  logger.info({ reason }, 'worker shutting down');
  clearTimeout(heartbeatTimer);
  if (sock && !socketClosed) {
    try { sock.end(undefined); } catch (err) { logger.warn({ err }, 'sock.end failed'); }
    await new Promise((r) => setTimeout(r, CLOSE_WAIT_MS).unref());
    if (socketClosed) return; // onClose owns the exit
  }
  await flushAuth();
  finalExit(exitCode);
}

function fatal(code, message, exit = 1) {
  emit({ type: 'error', code, message, fatal: true });
  shutdown(code, exit);
}

process.on('SIGTERM', () => shutdown('SIGTERM', 0));
process.on('SIGINT', () => shutdown('SIGINT', 0));
process.on('uncaughtException', (err) => {
  logger.fatal({ err }, 'uncaught exception');
  fatal('crash', String(err?.stack ?? err));
});
// Baileys fires many queries without awaiting them; a stray rejection is logged, not a crash
// (a crash would cost the tenant a reconnect for nothing). Real failures surface as a close.
process.on('unhandledRejection', (err) => { logger.error({ err }, 'unhandled rejection'); });

// ---- commands (stdin) -----------------------------------------------------------------------------
function reply(cmd, ok, resultOrError, message) {
  if (cmd.id === undefined) {
    if (!ok) emit({ type: 'error', code: resultOrError, message, fatal: false });
    return;
  }
  if (ok) emit({ type: 'reply', id: cmd.id, ok: true, result: resultOrError ?? {} });
  else emit({ type: 'reply', id: cmd.id, ok: false, error: resultOrError, message });
}

const timeout = (ms) => new Promise((r) => setTimeout(() => r('timeout'), ms).unref());

async function handleCommand(cmd) {
  switch (cmd.cmd) {
    case 'ping':
      reply(cmd, true, {});
      return;
    case 'go':
      if (!settings.standby) {
        reply(cmd, false, 'not_standby', 'this worker was not started as a standby');
        return;
      }
      if (goReceived) {
        reply(cmd, false, 'already_started', 'go was already received');
        return;
      }
      goReceived = true;
      reply(cmd, true, {});
      resolveGo();
      return;
    case 'stop':
      reply(cmd, true, {});
      await shutdown('stop command', 0);
      return;
    case 'pairing_code': {
      if (await Promise.race([sockReady, timeout(PAIRING_READY_WAIT_MS)]) === 'timeout' || socketClosed) {
        reply(cmd, false, 'not_ready', 'socket is not connected');
        return;
      }
      if (isRegistered(sock.authState.creds)) {
        reply(cmd, false, 'already_registered', 'this tenant is already linked');
        return;
      }
      if (await Promise.race([firstQr, timeout(PAIRING_READY_WAIT_MS)]) === 'timeout' || socketClosed) {
        reply(cmd, false, 'not_ready', 'registration handshake did not complete');
        return;
      }
      try {
        const code = await sock.requestPairingCode(cmd.phone);
        emit({ type: 'pairing_code', code });
        reply(cmd, true, { code });
      } catch (err) {
        reply(cmd, false, 'pairing_failed', String(err?.message ?? err));
      }
      return;
    }
    case 'logout': {
      if (await Promise.race([sockReady, timeout(PAIRING_READY_WAIT_MS)]) === 'timeout' || socketClosed) {
        reply(cmd, false, 'not_ready', 'socket is not connected');
        return;
      }
      try {
        // Sends remove-companion-device, then Baileys ends the socket with 401 -> our close -> exit.
        await sock.logout();
        reply(cmd, true, {});
      } catch (err) {
        reply(cmd, false, 'logout_failed', String(err?.message ?? err));
        // The daemon asked to log out; it archives the auth afterwards either way. Close with 401 so the
        // outcome is the same, and say in the message that the server was not told.
        const e = new Error(`Intentional Logout (server not notified: ${err?.message ?? err})`);
        e.output = { statusCode: 401 };
        try { sock.end(e); } catch { /* already closed */ }
      }
      return;
    }
    default:
      reply(cmd, false, 'bad_command', `unknown cmd ${cmd.cmd}`);
  }
}

const onLine = (line) => {
  let cmd;
  try {
    cmd = parseCommand(line);
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    if (err.id !== undefined) emit({ type: 'reply', id: err.id, ok: false, error: 'bad_command', message: err.message });
    else emit({ type: 'error', code: 'bad_command', message: err.message, fatal: false });
    return;
  }
  handleCommand(cmd).catch((err) => {
    logger.error({ err, cmd: cmd.cmd }, 'command failed');
    reply(cmd, false, 'command_failed', String(err?.message ?? err));
  });
};
process.stdin.on('data', makeLineSplitter(onLine, () => {
  emit({ type: 'error', code: 'bad_command', message: 'command line too long', fatal: false });
}));
// EOF on stdin: the daemon is gone (or closed our pipe on purpose). Exit promptly after flushing.
process.stdin.on('end', () => shutdown('stdin EOF', 0));
process.stdin.on('error', () => shutdown('stdin error', 0));

// ---- Baileys --------------------------------------------------------------------------------------
function isRegistered(creds) {
  // Only pair-success (QR or code) adds `account` (the ADV identity); with `me` it means the next start logs in
  // instead of showing a QR. `creds.registered` is no help: rc14 sets it in the pairing-code flow only, and already
  // at companion_finish, before the link is done. The daemon's storage.creds_linked is the same test.
  return Boolean(creds?.account && creds?.me?.id);
}

/** requestPairingCode saves creds.me = {id: PHONE@s.whatsapp.net} (and companion_finish `registered: true`) before
 *  the phone has linked anything; only pair-success adds `account`. Baileys logs in whenever creds.me is set, so a
 *  socket that closed before pair-success (code never typed, wrong code, QR refs ran out: 408) would make every later
 *  start log in as device 0 of that number and get 401, which the daemon treats as a logout. Such creds were never
 *  linked: forget the attempt so this start registers again and shows a QR. */
function dropUnfinishedCodePairing(creds) {
  if (!creds.pairingCode || creds.account || !creds.me) return;
  logger.warn('creds hold an unfinished pairing-code attempt (no pair-success); registering again');
  creds.me = undefined;
  creds.registered = false;
  creds.pairingCode = undefined;
}

async function resolveVersion(DEFAULT_CONNECTION_CONFIG, fetchLatestWaWebVersion) {
  const bundled = DEFAULT_CONNECTION_CONFIG.version;
  const policy = settings.version;
  if (policy.policy === 'explicit') return policy.version;
  if (policy.policy === 'bundled') return bundled;
  try {
    const res = await Promise.race([
      fetchLatestWaWebVersion({ signal: AbortSignal.timeout(VERSION_FETCH_TIMEOUT_MS) }),
      timeout(VERSION_FETCH_TIMEOUT_MS + 200),
    ]);
    if (res !== 'timeout' && res?.isLatest && Array.isArray(res.version)) return res.version;
    logger.warn({ error: res === 'timeout' ? 'timeout' : res?.error, bundled }, 'could not fetch the latest WhatsApp Web version; using the bundled one');
  } catch (err) {
    logger.warn({ err, bundled }, 'could not fetch the latest WhatsApp Web version; using the bundled one');
  }
  return bundled;
}

async function onClose(lastDisconnect) {
  if (socketClosed) return;
  socketClosed = true;
  clearTimeout(heartbeatTimer);
  const err = lastDisconnect?.error;
  const code = Number.isInteger(err?.output?.statusCode) ? err.output.statusCode : null;
  const reason = code !== null ? (baileys.DisconnectReason[code] ?? null) : null;
  const message = err?.message ?? (stopReason ? `stopped (${stopReason})` : 'connection closed');
  if (verificationFailed) {
    exitCode = Math.max(exitCode, 1);
    emit({ type: 'error', code: 'server_verification_failed', fatal: true,
      message: `server signature verification failed (${message}); connection refused` });
  }
  // Everything Baileys wrote (creds after pair-success, pre-keys, sessions) is on disk before the
  // daemon hears `close` and possibly starts the next worker on the same directory.
  await flushAuth();
  const event = { type: 'close', code, reason, message };
  if (isNewLogin) event.isNewLogin = true;
  emit(event);
  finalExit(exitCode);
}

async function main() {
  baileys = await import('@whiskeysockets/baileys');
  const { default: makeWASocket, Curve, DEFAULT_CONNECTION_CONFIG, fetchLatestWaWebVersion, INITIAL_PREKEY_COUNT } = baileys;
  const { loadLibsignalCurve, installVerifyPatch } = await import('./verify.mjs');
  try {
    installVerifyPatch(Curve, loadLibsignalCurve(baileysEntry), {
      onReject: () => {
        verificationFailed = true;
        logger.error('a server signature did not verify; the connection will be refused');
      },
    });
  } catch (err) {
    // Without a working check we would accept any server: do not connect at all.
    emit({ type: 'error', code: 'server_verification_failed', message: String(err?.message ?? err), fatal: true });
    finalExit(1);
    return;
  }

  const version = await resolveVersion(DEFAULT_CONNECTION_CONFIG, fetchLatestWaWebVersion);
  const baileysVersion = JSON.parse(readFileSync(new URL('../package.json', baileysEntry), 'utf8')).version;
  emit({ type: 'hello', protocol: PROTOCOL_VERSION, pid: process.pid, worker: WORKER_NAME,
    baileys: baileysVersion, waVersion: version });
  const heartbeat = () => {
    emit({ type: 'heartbeat', rss: process.memoryUsage.rss(), uptimeMs: Date.now() - startedAt });
    if (!shutdownStarted) heartbeatTimer = setTimeout(heartbeat, nextHeartbeatDelay(settings.heartbeatMs));
  };
  heartbeatTimer = setTimeout(heartbeat, nextHeartbeatDelay(settings.heartbeatMs));
  if (shutdownStarted) return; // EOF/SIGTERM/stop during start-up: shutdown() exits
  if (settings.standby) {
    // shutdown() exits the process; a standby that is never promoted ends here, having touched nothing.
    // Meanwhile it makes the key pairs of the first login's pre-key upload (idle CPU, nothing written).
    keyPool = startKeyPairPool(Curve, INITIAL_PREKEY_COUNT);
    await goSignal;
    keyPool.stop();
    if (shutdownStarted) return;
  }

  const { useAtomicMultiFileAuthState, AuthCorruptError } = await import('./auth-state.mjs');
  try {
    auth = await useAtomicMultiFileAuthState(settings.authDir, {
      onCorruptKey: (file, err) => {
        emit({ type: 'error', code: 'auth_corrupt_key', fatal: false,
          message: `${file} is unreadable (${err.message}); treated as missing` });
      },
      onWriteError: (err, file) => {
        if (!shutdownStarted) fatal('auth_write_failed', `writing ${file} failed: ${err.message}`);
      },
    });
  } catch (err) {
    const code = err instanceof AuthCorruptError ? 'auth_corrupt' : 'auth_load_failed';
    emit({ type: 'error', code, message: String(err?.message ?? err), fatal: true });
    finalExit(1);
    return;
  }
  if (shutdownStarted) return;
  dropUnfinishedCodePairing(auth.state.creds);

  sock = makeWASocket({
    auth: auth.state,
    version,
    browser: settings.browser,
    logger,
    ...(settings.waUrl ? { waWebSocketUrl: settings.waUrl } : {}),
    ...settings.socketOptions,
  });
  resolveSockReady();

  // The server's clock, from the `t` attribute (seconds) of the <success> node it sends at login. Reported on
  // `open` as `serverTime` (ms) so the daemon can show clock skew (seed cause 5). Baileys registered its own
  // CB:success listener first, so ours runs before the `open` update it eventually emits.
  let serverTimeMs = null;
  sock.ws.on('CB:success', (node) => {
    const t = Number(node?.attrs?.t);
    if (Number.isFinite(t) && t > 0) serverTimeMs = Math.round(t * 1000);
  });

  let sentConnecting = false;
  sock.ev.on('connection.update', (u) => {
    if (u.connection === 'connecting' && !sentConnecting) {
      sentConnecting = true;
      emit({ type: 'connecting' });
    }
    if (u.isNewLogin) isNewLogin = true;
    if (u.qr) {
      resolveFirstQr();
      emit({ type: 'qr', qr: u.qr });
    }
    if (u.connection === 'open') {
      const me = sock.authState.creds.me ?? {};
      const out = { id: me.id ?? null };
      if (me.lid) out.lid = me.lid;
      if (me.name) out.name = me.name;
      const event = { type: 'open', me: out, pushName: me.name ?? null };
      if (serverTimeMs !== null) event.serverTime = serverTimeMs;
      emit(event);
      keyPool?.release();
      // The login burst (pre-keys, app-state sync, optimised code) is garbage once the socket is idle: collect it
      // once, so an idle connected worker stays ~2 MiB smaller. Only with --expose-gc (the shipped command has it).
      if (typeof globalThis.gc === 'function') setTimeout(() => globalThis.gc(), 5000).unref();
    }
    if (u.connection === 'close') {
      onClose(u.lastDisconnect).catch((err) => {
        logger.fatal({ err }, 'close handling failed');
        finalExit(1);
      });
    }
  });

  sock.ev.on('creds.update', async () => {
    // Baileys merged the update into auth.state.creds in its own (earlier) listener.
    try {
      await auth.saveCreds();
    } catch {
      return; // onWriteError already reported it
    }
    const creds = auth.state.creds;
    emit({ type: 'creds', registered: isRegistered(creds), me: creds.me?.id ?? null });
  });

  sock.ev.on('messages.upsert', ({ messages, type }) => {
    let safe;
    try {
      safe = toJsonSafe(messages);
    } catch (err) {
      emit({ type: 'error', code: 'message_encode_failed', message: String(err?.message ?? err), fatal: false });
      return;
    }
    const { lines, errors } = encodeMessageEvents(type, safe);
    for (const line of lines) emitter.writeLine(line);
    for (const e of errors) emit(e);
  });
}

const { toJsonSafe } = await import('./jsonsafe.mjs');
main().catch((err) => {
  logger.fatal({ err }, 'worker start-up failed');
  emit({ type: 'error', code: 'startup_failed', message: String(err?.stack ?? err), fatal: true });
  finalExit(1);
});
