// How a worker ends: stop / stdin EOF / SIGTERM / fatal error end the socket, flush auth writes, exit. One exit path,
// so a line written before it (stdout and the pino log are synchronous) is never lost.

/** How long a stop/EOF/SIGTERM waits for Baileys' own close before exiting anyway (after the flush). */
const CLOSE_WAIT_MS = 600;

/** Adds finalExit, flushAuth, shutdown and fatal to the worker state `w` (worker.mjs). */
export function installLifecycle(w) {
  w.finalExit = (code) => {
    if (w.exiting) return;
    w.exiting = true;
    clearTimeout(w.heartbeatTimer);
    process.exit(code);
  };

  w.flushAuth = async () => {
    if (!w.auth) return;
    try {
      await w.auth.flush();
      await w.sender?.flush();
      await w.journal?.flush(); // acked tombstones: a replayed stanza is then answered, not re-emitted
    } catch (err) {
      w.emit({ type: 'error', code: 'auth_write_failed', message: String(err?.message ?? err), fatal: true });
      w.exitCode = 1;
    }
  };

  /** The close handler (socket.mjs) exits when Baileys reports the close in time; otherwise we exit ourselves
   *  after CLOSE_WAIT_MS. */
  w.shutdown = async (reason, code) => {
    if (code > w.exitCode) w.exitCode = code;
    if (w.shutdownStarted) return;
    w.shutdownStarted = true;
    w.stopReason = reason;
    w.logger.info({ reason }, 'worker shutting down');
    clearTimeout(w.heartbeatTimer);
    if (w.sock && !w.socketClosed) {
      try { w.sock.end(undefined); } catch (err) { w.logger.warn({ err }, 'sock.end failed'); }
      await new Promise((r) => setTimeout(r, CLOSE_WAIT_MS).unref());
      if (w.socketClosed) return; // the close handler owns the exit
    }
    await w.flushAuth();
    w.finalExit(w.exitCode);
  };

  w.fatal = (code, message, exit = 1) => {
    w.emit({ type: 'error', code, message, fatal: true });
    w.shutdown(code, exit);
  };
}

/** Signals and last-resort handlers of the process. */
export function installProcessHandlers(w) {
  process.on('SIGTERM', () => w.shutdown('SIGTERM', 0));
  process.on('SIGINT', () => w.shutdown('SIGINT', 0));
  process.on('uncaughtException', (err) => {
    w.logger.fatal({ err }, 'uncaught exception');
    w.fatal('crash', String(err?.stack ?? err));
  });
  // Baileys fires many queries without awaiting them; a stray rejection is logged, not a crash
  // (a crash would cost the tenant a reconnect for nothing). Real failures surface as a close.
  process.on('unhandledRejection', (err) => { w.logger.error({ err }, 'unhandled rejection'); });
}
