// Key pairs generated ahead of need by a standby worker (BSUP_STANDBY=1) while it waits for `go`, and by a worker
// while it shows a QR (socket.mjs: the login after the scan's 515 runs in the same process; filling stops at
// pair-success, the moment the login work starts).
//
// Why: the login that follows a scan's 515 uploads 812 fresh pre-keys (Baileys' INITIAL_PREKEY_COUNT), and Baileys
// generates them at that moment (Utils/signal.js generateOrGetPreKeys -> Curve.generateKeyPair), ~0.1-0.3 s of CPU
// on the path from scan to connected (docs/benchmarks.md). A standby is idle until `go`: it makes the pairs then,
// in small chunks so its stdin (the `go`) is never kept waiting, and hands them out through Curve.generateKeyPair.
// Only random key pairs are made in advance: nothing is written to the auth directory before `go`, and each pair is
// handed out once (a pair is as fresh as one made on the spot, so the Noise handshake's ephemeral key may take one
// too). The QR worker also stages each pair's pre-key file (onPair -> auth-state.mjs stagePreKey: a durable temp file
// that the login's write of that pair renames instead of creating; a standby writes nothing). Filling stops at `go`: measured on the loaded 2-core box, filling on during the login delayed every step of it
// (go -> connecting 175 -> 589 ms) and then made pairs nobody took. Left-overs are dropped at release() (`open`).

/** Start filling a pool of up to `count` pairs on the event loop (`chunk` per turn) and route
 *  Curve.generateKeyPair through it, oldest pair first. onPair(pair) sees each pair made (the QR worker stages its
 *  pre-key file: auth-state.mjs stagePreKey, written in making order, so handing out the oldest first hands out the
 *  staged ones first); onStop() runs at stop(), onRelease() at release(). Returns { size(), stop(), release() }. */
export function startKeyPairPool(Curve, count, { chunk = 25, onPair = null, onStop = null, onRelease = null } = {}) {
  const original = Curve.generateKeyPair;
  const pool = [];
  let next = 0; // pool[next] is the oldest pair not handed out
  let made = 0;
  let filling = true;
  let timer = null;
  const fill = () => {
    timer = null;
    if (!filling) return;
    for (let i = 0; i < chunk && made < count; i++, made++) {
      const pair = original();
      pool.push(pair);
      onPair?.(pair);
    }
    if (made < count) timer = setImmediate(fill);
    else filling = false;
  };
  timer = setImmediate(fill);
  Curve.generateKeyPair = () => (next < pool.length ? pool[next++] : original());
  return {
    size: () => pool.length - next,
    /** Stop generating (at `go`: the login needs the CPU); the pairs made so far are still handed out. */
    stop() {
      filling = false;
      onStop?.();
      if (timer) clearImmediate(timer);
      timer = null;
    },
    /** Stop, drop what is left and restore Curve.generateKeyPair. */
    release() {
      this.stop();
      pool.length = 0;
      next = 0;
      onRelease?.();
      if (Curve.generateKeyPair !== original) Curve.generateKeyPair = original;
    },
  };
}
