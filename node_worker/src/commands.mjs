// Commands from the daemon (stdin, docs/protocol.md): one handler per command, each answering with reply().
import { CommandError, parseCommand, makeLineSplitter } from './protocol.mjs';
import { isRegistered } from './creds.mjs';
import { reemitPending } from './inbound.mjs';
import { makeLease, LEASE_EXPIRED_EXIT } from './lease.mjs';

/** A pairing code can only be requested once the registration handshake is done (first QR seen). */
const READY_WAIT_MS = 10000;

const timeout = (ms) => new Promise((r) => setTimeout(() => r('timeout'), ms).unref());
/** True when `promise` resolved within READY_WAIT_MS and the socket is still open. */
const readyInTime = async (w, promise) => (await Promise.race([promise, timeout(READY_WAIT_MS)])) !== 'timeout'
  && !w.socketClosed;

function reply(w, cmd, ok, resultOrError, message) {
  if (cmd.id === undefined) {
    if (!ok) w.emit({ type: 'error', code: resultOrError, message, fatal: false });
    return;
  }
  if (ok) w.emit({ type: 'reply', id: cmd.id, ok: true, result: resultOrError ?? {} });
  else w.emit({ type: 'reply', id: cmd.id, ok: false, error: resultOrError, message });
}

const HANDLERS = {
  ping: (w, cmd) => reply(w, cmd, true, {}),

  // Cluster mode: the daemon's lease end; past it without a newer one the worker exits at once (lease.mjs).
  lease: (w, cmd) => {
    w.lease ??= makeLease({ onExpire: () => w.finalExit(LEASE_EXPIRED_EXIT) });
    w.lease.update(cmd.validUntil);
    reply(w, cmd, true, {});
  },

  go: (w, cmd) => {
    if (!w.settings.standby) return reply(w, cmd, false, 'not_standby', 'this worker was not started as a standby');
    if (w.goReceived) return reply(w, cmd, false, 'already_started', 'go was already received');
    w.goReceived = true;
    reply(w, cmd, true, {});
    w.go.resolve();
  },

  // The daemon committed these messages to its spool (or keeps no webhook): their journal entries become
  // tombstones and a decrypt waiting for room goes on (journal.mjs).
  ack: async (w, cmd) => {
    const refs = cmd.refs.filter((r) => typeof r === 'string');
    if (w.journal) await w.journal.ack(refs);
    reply(w, cmd, true, {});
  },

  // The daemon has room again after refusing messages: every unacked entry once more, in journal order.
  replay: (w, cmd) => {
    const n = w.auth ? reemitPending(w) : 0;
    reply(w, cmd, true, { replayed: n });
  },

  // Cluster mode: the daemon committed (ok) or could not commit a `state` event's auth writes (state-sync.mjs).
  state_ack: (w, cmd) => {
    w.stateSync?.ack(cmd.ref, cmd.ok);
    reply(w, cmd, true, {});
  },

  stop: async (w, cmd) => {
    reply(w, cmd, true, {});
    await w.shutdown('stop command', 0);
  },

  pairing_code: async (w, cmd) => {
    if (!await readyInTime(w, w.sockReady.promise)) return reply(w, cmd, false, 'not_ready', 'socket is not connected');
    if (isRegistered(w.sock.authState.creds)) {
      return reply(w, cmd, false, 'already_registered', 'this tenant is already linked');
    }
    if (!await readyInTime(w, w.firstQr.promise)) {
      return reply(w, cmd, false, 'not_ready', 'registration handshake did not complete');
    }
    try {
      const code = await w.sock.requestPairingCode(cmd.phone);
      w.emit({ type: 'pairing_code', code });
      reply(w, cmd, true, { code });
    } catch (err) {
      reply(w, cmd, false, 'pairing_failed', String(err?.message ?? err));
    }
  },

  send: async (w, cmd) => {
    // Not open (yet, or any more): the daemon's outbox keeps the message and sends it after the next `open`.
    if (!w.isOpen || w.socketClosed || !w.sender) return reply(w, cmd, false, 'not_ready', 'not connected');
    try {
      reply(w, cmd, true, await w.sender.send(cmd));
    } catch (err) {
      reply(w, cmd, false, 'send_failed', String(err?.message ?? err));
    }
  },

  logout: async (w, cmd) => {
    if (!await readyInTime(w, w.sockReady.promise)) return reply(w, cmd, false, 'not_ready', 'socket is not connected');
    try {
      // Sends remove-companion-device, then Baileys ends the socket with 401 -> our close -> exit.
      await w.sock.logout();
      reply(w, cmd, true, {});
    } catch (err) {
      reply(w, cmd, false, 'logout_failed', String(err?.message ?? err));
      // The daemon asked to log out; it archives the auth afterwards either way. Close with 401 so the
      // outcome is the same, and say in the message that the server was not told.
      const e = new Error(`Intentional Logout (server not notified: ${err?.message ?? err})`);
      e.output = { statusCode: 401 };
      try { w.sock.end(e); } catch { /* already closed */ }
    }
  },
};

function onLine(w, line) {
  let cmd;
  try {
    cmd = parseCommand(line);
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    if (err.id !== undefined) w.emit({ type: 'reply', id: err.id, ok: false, error: 'bad_command', message: err.message });
    else w.emit({ type: 'error', code: 'bad_command', message: err.message, fatal: false });
    return;
  }
  const handler = HANDLERS[cmd.cmd] ?? ((ww, c) => reply(ww, c, false, 'bad_command', `unknown cmd ${c.cmd}`));
  const run = async () => handler(w, cmd); // an async function runs synchronously up to its first await
  run().catch((err) => {
    w.logger.error({ err, cmd: cmd.cmd }, 'command failed');
    reply(w, cmd, false, 'command_failed', String(err?.message ?? err));
  });
}

/** Read commands from stdin; EOF or an error there means the daemon is gone: shut down (after flushing). */
export function listenForCommands(w, stdin = process.stdin) {
  stdin.on('data', makeLineSplitter((line) => onLine(w, line), () => {
    w.emit({ type: 'error', code: 'bad_command', message: 'command line too long', fatal: false });
  }));
  // The daemon is gone: no state_ack will come, the writes waiting for one fail now (the exit is not held up).
  stdin.on('end', () => { w.stateSync?.abort('stdin EOF'); w.shutdown('stdin EOF', 0); });
  stdin.on('error', () => { w.stateSync?.abort('stdin error'); w.shutdown('stdin error', 0); });
}
