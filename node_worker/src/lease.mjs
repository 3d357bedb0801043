// The worker lease (cluster mode only, docs/protocol.md "Lease"): the daemon sends `lease {validUntil}` (epoch ms)
// at each renewal of its own lease and once right after the spawn. When the latest validUntil passes without a newer
// one, the worker exits at once with LEASE_EXPIRED_EXIT, writing and flushing nothing: the daemon may be stopped (a
// full stdout pipe would block a write) and another node may own the tenant by now. No lease received = no deadline
// (single-host mode never sends one).
//
// Two clocks, the earlier deadline wins: the wall clock (validUntil is the daemon's, same host: a lease that reached
// us late is not extended) and the monotonic clock from the moment it arrived (a wall clock stepped back does not
// extend it either).
//
// Decided after the I/O already waiting, not at once: a worker whose loop was held for longer than a lease (importing
// Baileys at high load, descheduled) finds a long-past lease, or its due timer, together with the renewals the daemon
// kept sending; the latest of them decides. It exited on the first one before (every start failed at load ~40 while
// the daemon's lease was valid).

/** Exit code of a worker whose lease passed (docs/protocol.md "Process contract"). */
export const LEASE_EXPIRED_EXIT = 3;

/** setTimeout's longest delay; a later deadline is re-checked when it fires. */
const MAX_DELAY_MS = 2 ** 31 - 1;

/** makeLease({ onExpire, now, mono }) -> { update(validUntil), validUntil }. The latest lease wins (the daemon knows
 *  its lease best; a pipe does not reorder). The timer re-checks both clocks when it fires (an early timer or a
 *  clock step re-arms it) and does not keep the process alive. */
export function makeLease({ onExpire, now = Date.now, mono = () => performance.now() }) {
  let until = null;
  let monoUntil = null;
  let timer = null;
  let expired = false;
  let queued = false;
  let confirming = false;
  // The decision runs in setImmediate, and a lapse is confirmed by a second one: an immediate queued while the check
  // phase runs waits for the next turn's I/O, so the renewals already waiting in the pipe are read before the worker
  // exits (a loop held past the lease may resume in the middle of a turn, with an old check already queued).
  const settle = () => {
    queued = false;
    if (expired) return;
    const left = Math.min(until - now(), monoUntil - mono());
    if (left <= 0 && !confirming) {
      confirming = true;
      settleSoon();
      return;
    }
    confirming = false;
    if (left <= 0) {
      expired = true;
      onExpire();
      return;
    }
    if (timer) clearTimeout(timer);
    timer = setTimeout(settleSoon, Math.min(left, MAX_DELAY_MS));
    timer.unref?.();
  };
  function settleSoon() {
    if (queued || expired) return;
    queued = true;
    setImmediate(settle); // ref'd: an unref'd one lets the poll block until other work (the exit would wait)
  }
  return {
    update(validUntil) {
      until = validUntil;
      monoUntil = mono() + (validUntil - now());
      settleSoon();
    },
    get validUntil() { return until; },
  };
}
