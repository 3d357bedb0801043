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
// An update is checked at the end of the current turn, not at once: lines read in one chunk are applied in order
// first, so the latest decides. A worker that could not read its pipe for longer than a lease (importing Baileys
// at high load) finds its first, long-past lease followed by the renewals the daemon kept sending; it exited on the
// first one before (every start failed at load ~40 with the daemon's lease valid throughout).

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
  const check = () => {
    timer = null;
    if (expired) return;
    const left = Math.min(until - now(), monoUntil - mono());
    if (left <= 0) {
      expired = true;
      onExpire();
      return;
    }
    timer = setTimeout(check, Math.min(left, MAX_DELAY_MS));
    timer.unref?.();
  };
  return {
    update(validUntil) {
      until = validUntil;
      monoUntil = mono() + (validUntil - now());
      if (timer) clearTimeout(timer);
      timer = null;
      if (queued) return;
      queued = true;
      setImmediate(() => { queued = false; check(); }).unref?.();
    },
    get validUntil() { return until; },
  };
}
