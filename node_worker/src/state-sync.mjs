// Cluster mode (BSUP_STATE_SYNC=1; docs/protocol.md "Tenant state in cluster mode", docs/cluster.md "Tenant state"):
// the auth directory is a write-through cache of the daemon's fenced store. After each durable local write/remove
// the file's name and bytes go to the daemon in a `state` event; the caller's promise resolves on `state_ack ok`.
//
// Why batch: the first login writes 812 pre-keys in one keys.set; the writes that finish in the same loop turn share
// one event (and one transaction on the daemon's side), up to maxBatchBytes of base64 per line (the line limit is
// 1 MiB). Order: events leave in the order the local writes finished, and the daemon commits them in that order.

/** makeStateSync(emit) -> { push(name, text|null, {now}) -> Promise, ack(ref, ok), abort(reason), pending } */
export function makeStateSync(emit, { maxBatchBytes = 512 * 1024 } = {}) {
  let seq = 0;
  let batch = null; // {items, bytes, promise, resolve, reject}
  const waiting = new Map(); // ref -> batch sent, not yet acked
  let closed = null; // an Error once the daemon is gone: every later push fails at once

  const send = () => {
    const b = batch;
    batch = null;
    if (!b) return;
    const ref = `s${++seq}`;
    waiting.set(ref, b);
    emit({ type: 'state', ref, items: b.items });
  };

  const push = (name, text, { now = false } = {}) => {
    if (closed) return Promise.reject(closed);
    const value = text === null ? null : Buffer.from(text, 'utf8').toString('base64');
    const size = (value?.length ?? 4) + name.length + 8;
    if (batch && batch.bytes + size > maxBatchBytes) send();
    if (!batch) {
      const b = { items: {}, bytes: 0 };
      b.promise = new Promise((resolve, reject) => { b.resolve = resolve; b.reject = reject; });
      b.promise.catch(() => {}); // every caller awaits it; never an unhandled rejection when none is left
      batch = b;
      setImmediate(send);
    }
    batch.items[name] = value; // a newer write of the same file in the same batch replaces the older one
    batch.bytes += size;
    const { promise } = batch;
    if (now) send(); // creds.json: no batching delay
    return promise;
  };

  const ack = (ref, ok) => {
    const b = waiting.get(ref);
    if (!b) return;
    waiting.delete(ref);
    if (ok) b.resolve();
    else b.reject(Object.assign(new Error('auth write not committed by the daemon'), { code: 'state_not_committed' }));
  };

  /** stdin EOF: no answer will come; fail what waits, so the worker's exit is not held up. */
  const abort = (reason) => {
    closed = Object.assign(new Error(`auth write not committed: ${reason}`), { code: 'state_not_committed' });
    if (batch) waiting.set('unsent', batch);
    batch = null;
    for (const b of waiting.values()) b.reject(closed);
    waiting.clear();
  };

  return { push, ack, abort, get pending() { return waiting.size + (batch ? 1 : 0); } };
}
