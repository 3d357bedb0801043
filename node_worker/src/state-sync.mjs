// Cluster mode (BSUP_STATE_SYNC=1; docs/protocol.md "Tenant state in cluster mode", docs/cluster.md "Tenant state"):
// the auth directory is a write-through cache of the daemon's fenced store. After each durable local write/remove
// the file's name and bytes go to the daemon in a `state` event; the caller's promise resolves on `state_ack ok`.
//
// Why batch: the first login writes 812 pre-keys in one keys.set, and they finish locally a few per loop turn (one
// event per turn: 40-51 events per pairing before the staged pre-keys; 188 for 300 writes that trickle in). So: a
// push with no event in flight leaves after this turn (setImmediate: the writes finishing in the same turn join it,
// a lone write waits for nothing else); while an event is unacknowledged, pushes accumulate into the next batch,
// which leaves as soon as the acks are in (the daemon's commit is what the writes wait for anyway), or at once when
// it reaches maxBatchBytes of base64 (the line limit is 1 MiB). `now` (creds.json) sends the batch at once whatever
// is in flight.
// Order: events leave in the order the local writes finished, and the daemon commits them in that order.
// `defer` (the decrypt journal's entry, journal.mjs): joins the batch but does not send it; the next ordinary push
// (the ratchet's session write) or release() does, so both commit in one transaction.

/** makeStateSync(emit) -> { push(name, text|null, {now, defer}) -> Promise, release(), ack(ref, ok), abort(reason),
 *  pending, queued } */
export function makeStateSync(emit, { maxBatchBytes = 512 * 1024 } = {}) {
  let seq = 0;
  let batch = null; // {items, bytes, promise, resolve, reject}: not sent yet
  let scheduled = false; // a setImmediate(send) is queued
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
  const sendIfIdle = () => {
    scheduled = false;
    if (waiting.size === 0) send(); // else the last ack sends it
  };

  const schedule = () => {
    if (!scheduled && waiting.size === 0) {
      scheduled = true;
      setImmediate(sendIfIdle);
    }
  };

  const push = (name, text, { now = false, defer = false } = {}) => {
    if (closed) return Promise.reject(closed);
    const value = text === null ? null : Buffer.from(text, 'utf8').toString('base64');
    const size = (value?.length ?? 4) + name.length + 8;
    if (batch && batch.bytes + size > maxBatchBytes) send();
    if (!batch) {
      const b = { items: {}, bytes: 0 };
      b.promise = new Promise((resolve, reject) => { b.resolve = resolve; b.reject = reject; });
      b.promise.catch(() => {}); // every caller awaits it; never an unhandled rejection when none is left
      batch = b;
    }
    batch.items[name] = value; // a newer write of the same file in the same batch replaces the older one
    batch.bytes += size;
    const { promise } = batch;
    if (now) send(); // creds.json: no batching delay
    else if (!defer) schedule();
    return promise;
  };

  const ack = (ref, ok) => {
    const b = waiting.get(ref);
    if (!b) return;
    waiting.delete(ref);
    if (ok) b.resolve();
    else b.reject(Object.assign(new Error('auth write not committed by the daemon'), { code: 'state_not_committed' }));
    if (waiting.size === 0 && !closed) send(); // what accumulated meanwhile leaves now
  };

  /** stdin EOF: no answer will come; fail what waits, so the worker's exit is not held up. */
  const abort = (reason) => {
    closed = Object.assign(new Error(`auth write not committed: ${reason}`), { code: 'state_not_committed' });
    if (batch) waiting.set('unsent', batch);
    batch = null;
    for (const b of waiting.values()) b.reject(closed);
    waiting.clear();
  };

  /** Send a deferred batch as an ordinary push would. */
  const release = () => { if (batch) schedule(); };

  return {
    push, ack, abort, release,
    get pending() { return waiting.size + (batch ? 1 : 0); },
    /** Items in the batch not sent yet (waiting for this turn's end or for an ack). */
    get queued() { return batch ? Object.keys(batch.items).length : 0; },
  };
}
