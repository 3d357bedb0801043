// The worker lease (cluster mode only, docs/protocol.md "Lease"): the daemon sends `lease {validUntil}` (epoch ms)
// at each renewal of its own lease and once right after the spawn. When the wall clock passes the latest validUntil
// without a newer one, the worker exits at once with LEASE_EXPIRED_EXIT, writing and flushing nothing: the daemon
// may be stopped (a full stdout pipe would block a write) and another node may own the tenant by now. No lease
// received = no deadline (single-host mode never sends one).

/** Exit code of a worker whose lease passed (docs/protocol.md "Process contract"). */
export const LEASE_EXPIRED_EXIT = 3;

/** setTimeout's longest delay; a later deadline is re-checked when it fires. */
const MAX_DELAY_MS = 2 ** 31 - 1;

/** makeLease({ onExpire, now }) -> { update(validUntil), validUntil }. The latest lease wins (the daemon knows its
 *  lease best; a pipe does not reorder). The timer re-checks the clock when it fires (a clock step or an early
 *  timer re-arms it) and does not keep the process alive. */
export function makeLease({ onExpire, now = Date.now }) {
  let until = null;
  let timer = null;
  let expired = false;
  const check = () => {
    timer = null;
    if (expired) return;
    const left = until - now();
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
      if (timer) clearTimeout(timer);
      check();
    },
    get validUntil() { return until; },
  };
}
