// The server's per-device queue. Every stanza for a device (a contact's message, a receipt for a
// message it sent) is queued and stays queued until the device acknowledges it: a message by a
// <receipt> or an <ack class=message error=…>, a receipt by <ack class=receipt>. A queued stanza
// goes out at once while the device has an active session; whatever is still queued at the next
// login is delivered with offline="1" right after <passive><active>, then <ib><offline count=N>
// (which can be held: config offlineHoldMs, or POST /offline/hold until /offline/release).
const S_WA = 's.whatsapp.net';
const nowSec = () => String(Math.floor(Date.now() / 1000));

export class Mailbox {
  constructor(sim) {
    this.sim = sim;
    this.held = false; // POST /offline/hold: <ib><offline> waits for /offline/release
    this.waiting = new Map(); // finisher of an offline batch waiting for the release -> its conn
    this.dropNext = new Map(); // device jid or '*' -> receipts still to drop
  }

  static stats() {
    return { queued: 0, sent: 0, redelivered: 0, offlineBatches: 0, receipts: {}, receiptsDropped: 0, acks: 0, errorAcks: {} };
  }

  /** Queue a stanza for a device; sent now if the device has an active session. */
  enqueue(dev, node) {
    const entry = { tag: node.tag, id: node.attrs.id, node, queuedAt: Date.now(), sends: 0, lastConn: null };
    dev.queue.push(entry);
    dev.stats.queued++;
    const conn = [...dev.live.values()].find(c => c.active);
    if (conn) this.sendEntry(conn, dev, entry, false);
    return entry;
  }

  sendEntry(conn, dev, entry, offline) {
    if (entry.sends) dev.stats.redelivered++;
    entry.sends++;
    entry.lastConn = conn.id;
    dev.stats.sent++;
    const node = offline ? { ...entry.node, attrs: { ...entry.node.attrs, offline: '1' } } : entry.node;
    this.sim.send(conn, node);
  }

  /** After <passive><active>: the offline batch, then <ib><offline count>, then live delivery. */
  onActive(conn, dev) {
    const batch = dev ? dev.queue.slice() : [];
    for (const e of batch) this.sendEntry(conn, dev, e, true);
    if (dev && batch.length) dev.stats.offlineBatches++;
    const finish = () => {
      this.waiting.delete(finish);
      if (conn.closed) return;
      this.sim.send(conn, { tag: 'ib', attrs: { from: S_WA }, content: [{ tag: 'offline', attrs: { count: String(batch.length) } }] });
      conn.active = true;
      this.sim.event('offline_delivered', { conn: conn.id, jid: conn.jid, count: batch.length });
      // Whatever was queued during the batch goes out live now.
      for (const e of dev?.queue ?? []) if (e.lastConn !== conn.id) this.sendEntry(conn, dev, e, false);
    };
    if (this.held) this.waiting.set(finish, conn);
    else if (this.sim.config.offlineHoldMs > 0) setTimeout(finish, this.sim.config.offlineHoldMs);
    else finish();
  }

  hold() {
    this.held = true;
    return { held: true, waiting: [...this.waiting.values()].filter(c => !c.closed).length };
  }

  /** Send every withheld <ib><offline>; returns how many live connections got theirs. */
  release() {
    this.held = false;
    const live = [...this.waiting].filter(([, c]) => !c.closed);
    for (const finish of [...this.waiting.keys()]) finish();
    return { held: false, released: live.length };
  }

  /** Lose the next `count` receipts from a device (jid) or from any device (no jid). */
  dropReceipts(key, count = 1) {
    this.dropNext.set(key, (this.dropNext.get(key) ?? 0) + count);
    return Object.fromEntries(this.dropNext);
  }

  takeDrop(jid) {
    for (const key of [jid, '*']) {
      const n = this.dropNext.get(key);
      if (n) {
        if (n > 1) this.dropNext.set(key, n - 1); else this.dropNext.delete(key);
        return true;
      }
    }
    return false;
  }

  /** Remove and return the queued entries `tag` with these ids. */
  dequeue(dev, tag, ids) {
    const out = [];
    dev.queue = dev.queue.filter(e => (e.tag === tag && ids.includes(e.id) ? (out.push(e), false) : true));
    return out;
  }

  /** A <receipt> from a device for messages it received: the queue forgets them. */
  onReceipt(conn, dev, node) {
    const ids = [node.attrs.id, ...((node.content?.[0]?.content ?? []).map(i => i.attrs?.id))].filter(Boolean);
    const type = node.attrs.type ?? 'delivery';
    if (type === 'retry') return this.sim.contacts.onTenantRetry(conn, dev, node);
    if (this.takeDrop(dev.jid)) {
      dev.stats.receiptsDropped++;
      this.sim.event('receipt_dropped', { conn: conn.id, jid: dev.jid, ids, receiptType: type });
      return;
    }
    dev.stats.receipts[type] = (dev.stats.receipts[type] ?? 0) + 1;
    const done = this.dequeue(dev, 'message', ids);
    this.sim.event('receipt', { conn: conn.id, jid: dev.jid, ids, receiptType: type, dequeued: done.length });
    this.sim.send(conn, { tag: 'ack', attrs: { class: 'receipt', id: node.attrs.id, from: node.attrs.to ?? S_WA, t: nowSec(), ...(node.attrs.type ? { type: node.attrs.type } : {}) } });
    this.sim.contacts.onTenantReceipt(dev, node.attrs.to, ids, type);
  }

  /** An <ack> from a device: a message class ack (maybe with error) or a receipt class ack. */
  onAck(conn, dev, node) {
    const { id, error } = node.attrs;
    const cls = node.attrs.class;
    if (cls !== 'message' && cls !== 'receipt') return false;
    const done = this.dequeue(dev, cls, [id]);
    if (cls === 'message' && error) {
      dev.stats.errorAcks[error] = (dev.stats.errorAcks[error] ?? 0) + 1;
      this.sim.event('error_ack', { conn: conn.id, jid: dev.jid, id, error, dequeued: done.length });
    } else {
      dev.stats.acks++;
    }
    return done.length > 0;
  }
}
