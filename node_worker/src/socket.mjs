// The worker's Baileys socket: create it, translate its events into protocol events, and end the process when it
// closes (one socket per process lifetime; the daemon decides what follows), except after the scan: see below.
import { existsSync, writeFileSync } from 'node:fs';
import { isRegistered } from './creds.mjs';
import { onMessagesUpsert, onMessagesUpdate, reemitPending } from './inbound.mjs';
import { killAfterDecrypts } from './journal.mjs';
import { startKeyPairPool } from './prekey-pool.mjs';
import { makeSendDurable, holdSessionCommits } from './send-durable.mjs';
import { oneSignalLock } from './signal-lock.mjs';

/** The scan's 515: right after pair-success WhatsApp closes the socket and expects a login with the new creds
 *  (restartRequired). Baileys' own example opens a new socket in the same process for it, and so do we: a new
 *  process would cost Node start-up plus the Baileys import (~0.9 s) exactly when a user waits, and a standby that
 *  was started at the QR is still importing when the scan comes within a second of it. Only then: the linked creds
 *  were written synchronously at pair-success (auth-files.mjs writeNow) and the rest is flushed before the new socket
 *  reads them; every other close, a stop in progress, a failed verification or creds that are not linked keep the
 *  exit. Once per process: the second socket logs in and has no pair-success. BSUP_RESTART_IN_PROCESS=off (via
 *  worker.env) restores the exit, for comparisons. */
export const restartInProcess = () => process.env.BSUP_RESTART_IN_PROCESS !== 'off';

function reconnectsInProcess(w, code) {
  return code === 515 && w.isNewLogin && !w.reconnected && !w.shutdownStarted && !w.exiting
    && !w.verificationFailed && w.exitCode === 0 && isRegistered(w.auth.state.creds) && restartInProcess();
}

/** The socket closed: flush, report `close`, exit (or, after the scan's 515, open the next socket). */
async function onClose(w, lastDisconnect) {
  if (w.socketClosed) return;
  w.socketClosed = true;
  w.isOpen = false;
  const err = lastDisconnect?.error;
  const code = Number.isInteger(err?.output?.statusCode) ? err.output.statusCode : null;
  const reason = code !== null ? (w.baileys.DisconnectReason[code] ?? null) : null;
  const message = err?.message ?? (w.stopReason ? `stopped (${w.stopReason})` : 'connection closed');
  if (w.verificationFailed) {
    w.exitCode = Math.max(w.exitCode, 1);
    w.emit({ type: 'error', code: 'server_verification_failed', fatal: true,
      message: `server signature verification failed (${message}); connection refused` });
  }
  // Everything Baileys wrote (creds after pair-success, pre-keys, sessions) is on disk before the
  // daemon hears `close` and possibly starts the next worker on the same directory.
  await w.flushAuth();
  const event = { type: 'close', code, reason, message };
  if (w.isNewLogin) event.isNewLogin = true;
  if (reconnectsInProcess(w, code)) { // checked after the flush: a stop or a failed write meanwhile exits
    w.emit({ ...event, reconnecting: true });
    w.reconnected = true;
    w.isNewLogin = false;
    w.socketClosed = false;
    try {
      // test-only (tests/e2e/test_pairing.py, via worker.env): the fallback below, which nothing else can reach
      if (process.env.BSUP_TEST_FAIL_RECONNECT === '1') throw new Error('BSUP_TEST_FAIL_RECONNECT');
      openSocket(w, w.version);
      return;
    } catch (e) {
      // The daemon then sees what it saw before in-process reconnects existed: a close 515 and an exit, and
      // restarts the worker at once (a new process: this one said restartInProcess, so it got no standby).
      w.logger.error({ err: e }, 'in-process reconnect failed');
      w.socketClosed = true;
      w.emit({ ...event, message: `in-process reconnect failed: ${e?.message ?? e}` });
    }
  } else {
    w.emit(event);
  }
  clearTimeout(w.heartbeatTimer);
  w.finalExit(w.exitCode);
}

function openEvent(sock, serverTime) {
  const me = sock.authState.creds.me ?? {};
  const out = { id: me.id ?? null };
  if (me.lid) out.lid = me.lid;
  if (me.name) out.name = me.name;
  const event = { type: 'open', me: out, pushName: me.name ?? null };
  if (serverTime.ms !== null) Object.assign(event, { serverTime: serverTime.ms, successAt: serverTime.at });
  return event;
}

function onConnectionUpdates(w, serverTime) {
  let sentConnecting = false;
  return (u) => {
    if (u.connection === 'connecting' && !sentConnecting) {
      sentConnecting = true;
      w.emit({ type: 'connecting' });
    }
    if (u.isNewLogin) {
      w.isNewLogin = true;
      w.keyPool?.stop(); // pair-success: the login comes next and needs the CPU; the pairs made so far are used
    }
    if (u.qr) {
      w.firstQr.resolve();
      w.emit({ type: 'qr', qr: u.qr });
      // While the QR is shown the worker is idle: make the pre-key pairs that the login after the scan's 515 (on
      // this process's next socket) uploads, as a standby does while it waits (prekey-pool.mjs).
      if (!w.keyPool && restartInProcess()) {
        // ...and their pre-key files, fsynced, for that login to rename instead of create (auth-state.mjs stagePreKey)
        w.keyPool = startKeyPairPool(w.baileys.Curve, w.baileys.INITIAL_PREKEY_COUNT,
          { onPair: w.auth.stagePreKey, onStop: w.auth.stopStaging, onRelease: w.auth.dropStaged });
      }
    }
    if (u.connection === 'open') {
      w.isOpen = true; // `send` waits for this
      w.emit(openEvent(w.sock, serverTime));
      if (w.keyPool) w.logger.debug({ staged: w.auth.adoptedPreKeys }, 'pre-key files staged during the QR, used');
      w.keyPool?.release();
      // The login burst (pre-keys, app-state sync, optimised code) is garbage once the socket is idle: collect it
      // once, so an idle connected worker stays ~2 MiB smaller. Only with --expose-gc (the shipped command has it).
      if (typeof globalThis.gc === 'function') setTimeout(() => globalThis.gc(), 5000).unref();
    }
    if (u.connection === 'close') {
      onClose(w, u.lastDisconnect).catch((err) => {
        w.logger.fatal({ err }, 'close handling failed');
        w.finalExit(1);
      });
    }
  };
}

/** Synchronous on purpose: Baileys emits creds.update and then goes on in the same turn, at pair-success by sending
 *  the reply that links the device on the phone (Socket/socket.js, CB:iq,,pair-success). Written here, the linked
 *  creds are durable before that reply leaves (README "Creds before the pairing reply"). */
function onCredsUpdate(w) {
  return () => {
    // Baileys merged the update into auth.state.creds in its own (earlier) listener.
    try {
      w.auth.saveCredsNow();
    } catch {
      // onWriteError made it fatal, and shutdown() ended the socket before returning here: at pair-success the
      // reply then finds it closed and is never sent (nothing linked on the phone, nothing lost).
      return;
    }
    const creds = w.auth.state.creds;
    w.emit({ type: 'creds', registered: isRegistered(creds), me: creds.me?.id ?? null });
  };
}

/** Baileys' signal repository, wrapped: its transactions under the lock sends take (signal-lock.mjs), a send's keys
 *  durable before its stanza (send-durable.mjs, always), then the decrypt journal (journal.mjs): durable before the
 *  receipt. `auth.keys` is Baileys' transaction-capable store. */
function signalRepository(w, baseRepository, durable) {
  return (auth, logger, pnToLid) => {
    const keys = oneSignalLock(auth.keys, auth.creds);
    let repo = durable.wrapRepository(baseRepository({ ...auth, keys: durable.recordingKeys(keys) }, logger,
      pnToLid), keys);
    if (w.journal) repo = w.journal.wrapRepository(repo, keys);
    else if (w.killAfterDecrypts) repo = killAfterDecrypts(repo, w.killAfterDecrypts);
    return repo;
  };
}

/** makeWASocket on the loaded auth state, with every listener the protocol needs. */
export function openSocket(w, version) {
  const { settings } = w;
  const baseRepository = w.baileys.DEFAULT_CONNECTION_CONFIG.makeSignalRepository;
  const HISTORY = w.baileys.proto.HistorySync.HistorySyncType;
  const durable = makeSendDurable(w.auth.state.keys); // the raw store: durable writes bypass Baileys' transactions
  const sock = w.baileys.default({
    // The store Baileys' transactions commit to: without the rewrites of what a send wrote before its stanza
    // (send-durable.mjs); holdSessionCommits is a test hook, a no-op unless its variable is set.
    auth: { ...w.auth.state, keys: holdSessionCommits(durable.committingKeys(w.auth.state.keys),
      process.env.BSUP_TEST_HOLD_SESSION_COMMITS, { existsSync, writeFileSync }) },
    version,
    browser: settings.browser,
    logger: w.logger,
    // We forward no message history (docs/protocol.md, "Incoming"): RECENT and FULL syncs are skipped, so a first
    // login does not buffer every upsert for 20 s waiting for one (Socket/chats.js, AwaitingInitialSync asks about
    // RECENT). The other types stay on: INITIAL_BOOTSTRAP and NON_BLOCKING_DATA carry the PN<->LID mappings, and
    // Baileys warns that sessions break without them (Socket/socket.js).
    shouldSyncHistoryMessage: ({ syncType }) => syncType !== HISTORY.RECENT && syncType !== HISTORY.FULL,
    makeSignalRepository: signalRepository(w, baseRepository, durable),
    ...(settings.waUrl ? { waWebSocketUrl: settings.waUrl } : {}),
    getMessage: w.sender.getMessage, // retry receipts for what we sent, also after a restart (send.mjs)
    ...settings.socketOptions,
  });
  w.sock = sock;
  w.sockReady.resolve();

  // The server's clock, from the `t` attribute (seconds) of the <success> node it sends at login. Reported on
  // `open` as `serverTime` (ms) so the daemon can show clock skew (seed cause 5), with `successAt`, this host's
  // clock when the node was read: the login's work between the node and `open` (seconds on a loaded machine) is
  // then not counted as skew. Baileys registered its own CB:success listener first, so ours runs before the `open`
  // update it eventually emits.
  const serverTime = { ms: null, at: null };
  sock.ws.on('CB:success', (node) => {
    const t = Number(node?.attrs?.t);
    if (Number.isFinite(t) && t > 0) Object.assign(serverTime, { ms: Math.round(t * 1000), at: Date.now() });
  });
  sock.ev.on('connection.update', onConnectionUpdates(w, serverTime));
  sock.ev.on('creds.update', onCredsUpdate(w));
  // Registered after Baileys' own CB:message handler, but that one reaches decrypt only after an await: ours, which
  // is synchronous, has noted the stanza's envelope by then.
  if (w.journal) sock.ws.on('CB:message', w.journal.noteStanza);
  sock.ev.on('messages.upsert', onMessagesUpsert(w));
  w.sender.listen(sock);
  sock.ev.on('messages.update', onMessagesUpdate(w));
  if (!w.reconnected) reemitPending(w); // what an earlier worker journaled but the daemon never acked (once per process)
  return sock;
}
