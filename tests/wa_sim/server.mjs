// WhatsApp Web server simulator: the WebSocket endpoint and its connections (transport, Noise,
// per-connection stage), wired to the parts that handle what arrives on them. Protocol facts it
// implements: PROTOCOL.md in this directory (cited as "PROTOCOL.md §N").
import http from 'node:http';
import { EventEmitter } from 'node:events';
import { ws as wsPkg } from './baileys.mjs';
import { ServerNoise, makeServerIdentity } from './noise.mjs';
import { Devices } from './devices.mjs';
import { Pairing } from './pairing.mjs';
import { Session } from './session.mjs';
import { Faults } from './faults.mjs';
import { LinkCodes } from './link_code.mjs';
import { Contacts } from './contacts.mjs';
import { Directory } from './directory.mjs';
import { Mailbox } from './mailbox.mjs';
import { SimError } from './errors.mjs';

export const DEFAULT_CONFIG = {
  qrRefs: 6, // refs per <pair-device>, like WhatsApp
  qrFirstMs: 60000, // how long the first ref is current (Baileys' own default qrTimeout)
  qrNextMs: 20000, // how long each later ref is current
  closeGraceMs: 1000, // after a stream:error the server force-closes if the client has not
  pairReplyTimeoutMs: 10000, // wait for <pair-device-sign>
  preKeysOnNewDevice: 0, // what <count> reports before the first upload (0 => Baileys uploads 812)
  offlineHoldMs: 0, // after an offline batch, wait this long before <ib><offline count=N>
  contactRetries: 3, // retry receipts a contact sends per message it cannot decrypt (retry.mjs; 0 = none)
  contactResends: 0 // resends per message for a tenant's retry receipt (retry.mjs; 0 = recorded only)
};

let connSeq = 0;

export class WaSimulator extends EventEmitter {
  constructor({ rootKey, config = {}, log = () => {} } = {}) {
    super();
    if (!rootKey) throw new Error('rootKey required');
    this.identity = makeServerIdentity(rootKey);
    this.config = { ...DEFAULT_CONFIG, ...config };
    this.startConfig = { ...this.config }; // what POST /reset goes back to
    this.log = log;
    this.wss = new wsPkg.WebSocketServer({ noServer: true, perMessageDeflate: false });
    this.http = http.createServer((req, res) => {
      // A plain HTTP request (no upgrade) is harmless to answer; only the upgrade must never get
      // a non-101 response (PROTOCOL.md §3.3: Baileys hangs).
      res.writeHead(426, { 'content-type': 'text/plain' }).end('WebSocket endpoint: /ws/chat\n');
    });
    this.http.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket, head));
    this.reset();
  }

  reset() {
    for (const c of this.conns?.values() ?? []) c.ws?.terminate();
    for (const s of this.pendingSockets ?? []) s.destroy();
    this.conns = new Map(); // id -> Conn (live only)
    this.pendingSockets = new Set(); // stalled pre-101 sockets
    this.devices = new Devices();
    this.events = [];
    this.eventSeq = 0;
    this.counters = {
      upgrades: 0, connections: 0, handshakes: 0, registrations: 0, qrRefsIssued: 0,
      scans: 0, scanFailures: 0, pairings: 0, logins: 0, loginFailures: 0,
      conflicts: 0, conflictsFromDuplicates: 0, kills: {}, faultsApplied: {},
      preKeyUploads: 0, pings: 0, iqs: 0, linkCodeRequests: 0, codeEntries: 0, codeEntryFailures: 0,
      usyncQueries: 0, keyFetches: 0, contactMessages: 0, tenantMessages: 0, sendsToNobody: 0,
      tenantRetryReceipts: 0, sendsRejected: 0, contactRetryReceipts: 0, contactResends: 0
    };
    this.pairing = new Pairing(this); // registration sockets, QR refs, scans, pair-success
    this.session = new Session(this); // logins and the stanzas of a logged-in session
    this.faults = new Faults(this); // injected faults and kills
    this.linkCodes = new LinkCodes(this); // pairing by phone-number code (link_code.mjs)
    this.contacts = new Contacts(this); // simulated contacts and their conversations with tenants
    this.directory = new Directory(this); // usync answers and pre-key bundle fetches
    this.mailbox = new Mailbox(this); // per-device queues, offline delivery, receipts and acks
  }

  configure(patch = {}) {
    for (const [k, v] of Object.entries(patch)) {
      if (!(k in DEFAULT_CONFIG)) throw new SimError('bad_config', `unknown config key ${k}`, 400);
      if (typeof v !== 'number' || !(v >= 0)) throw new SimError('bad_config', `${k} must be a number >= 0`, 400);
      this.config[k] = v;
    }
    return this.config;
  }

  event(type, data = {}) {
    const e = { seq: ++this.eventSeq, t: Date.now(), type, ...data };
    this.events.push(e);
    if (this.events.length > 2000) this.events.shift();
    this.log(e);
    this.emit('event', e);
    return e;
  }

  listen(port = 0, host = '127.0.0.1') {
    return new Promise((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(port, host, () => resolve(this.http.address().port));
    });
  }

  async close() {
    this.reset();
    this.wss.close();
    await new Promise(r => this.http.close(r));
  }

  // ---------------------------------------------------------------- transport

  onUpgrade(req, socket, head) {
    this.counters.upgrades++;
    const path = new URL(req.url, 'http://x').pathname;
    // Faults are bound to the next upgrade on /ws/chat, in queue order.
    const fault = path === '/ws/chat' ? this.faults.take() : null;
    if (path !== '/ws/chat' || fault?.fault === 'refuse') {
      // Never an HTTP error status here: drop the TCP connection so the client sees an error.
      this.event('refused', { path, fault: fault?.fault });
      socket.destroy();
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, req, fault));
  }

  onConnection(ws, req, fault) {
    const conn = {
      id: ++connSeq, ws, fault, noise: new ServerNoise(this.identity), stage: 'hello',
      kind: null, jid: null, openedAt: Date.now(), silent: false, closed: false,
      waiters: new Map(), queue: Promise.resolve(), remote: `${req.socket.remoteAddress}:${req.socket.remotePort}`
    };
    this.conns.set(conn.id, conn);
    this.counters.connections++;
    this.event('connection', { conn: conn.id, fault: fault?.fault });
    ws.on('message', (data) => {
      // Frames are processed strictly in order (decodeBinaryNode is async).
      conn.queue = conn.queue.then(() => this.onData(conn, data)).catch((err) => {
        this.event('protocol_error', { conn: conn.id, error: String(err?.message ?? err) });
        ws.terminate();
      });
    });
    ws.on('close', (code) => this.onClose(conn, code));
    ws.on('error', () => {});
  }

  onClose(conn, code) {
    if (conn.closed) return;
    conn.closed = true;
    conn.closedAt = Date.now();
    clearTimeout(conn.closeTimer);
    this.conns.delete(conn.id);
    for (const w of conn.waiters.values()) w.reject(new SimError('connection_closed', 'connection closed'));
    conn.waiters.clear();
    const dev = conn.jid && this.devices.get(conn.jid);
    if (dev) dev.live.delete(conn.id);
    this.event('close', { conn: conn.id, kind: conn.kind, jid: conn.jid, wsCode: code, lifeMs: conn.closedAt - conn.openedAt });
  }

  send(conn, node) {
    if (conn.closed || conn.silent) return;
    conn.ws.send(conn.noise.encodeNode(node));
  }

  /** Send a node, then force-close after the grace period unless the client closes first. */
  sendAndClose(conn, node, graceMs = this.config.closeGraceMs) {
    if (node) this.send(conn, node);
    clearTimeout(conn.closeTimer);
    conn.closeTimer = setTimeout(() => conn.ws.terminate(), graceMs);
  }

  waitForIq(conn, id, timeoutMs) {
    if (conn.closed) return Promise.reject(new SimError('connection_closed', 'connection closed'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        conn.waiters.delete(id);
        reject(new SimError('pair_timeout', `no reply to iq ${id} within ${timeoutMs} ms`, 504));
      }, timeoutMs);
      conn.waiters.set(id, {
        resolve: (n) => { clearTimeout(timer); resolve(n); },
        reject: (e) => { clearTimeout(timer); reject(e); }
      });
    });
  }

  /** Hand a node to whoever waits for it on this connection (waitForIq); false if nobody does. */
  resolveWaiter(conn, key, node) {
    const w = conn.waiters.get(key);
    if (w) { conn.waiters.delete(key); w.resolve(node); }
    return Boolean(w);
  }

  async onData(conn, data) {
    if (conn.closed) return;
    const frames = await conn.noise.feed(Buffer.from(data));
    for (const frame of frames) {
      if (conn.closed) return;
      if (conn.stage === 'hello') {
        if (conn.fault?.fault === 'stall_handshake') { conn.silent = true; return; }
        conn.ws.send(conn.noise.frame(conn.noise.respondHello(frame)));
        conn.stage = 'finish';
      } else if (conn.stage === 'finish') {
        const payload = conn.noise.acceptFinish(frame);
        conn.stage = 'transport';
        this.counters.handshakes++;
        this.onClientPayload(conn, payload);
      } else if (!conn.silent) {
        this.session.onNode(conn, frame);
      }
    }
  }

  onClientPayload(conn, payload) {
    const f = conn.fault?.fault;
    if (f === 'silent') { conn.silent = true; this.event('silent', { conn: conn.id }); return; }
    if (f === 'tcp_drop_after_handshake') { conn.ws.terminate(); return; }
    if (f === 'stream_error') {
      return this.sendAndClose(conn, { tag: 'stream:error', attrs: { code: String(conn.fault.code ?? 503) } });
    }
    if (payload.devicePairingData) return this.pairing.onRegistration(conn, payload);
    return this.session.onLogin(conn, payload);
  }

  // ---------------------------------------------------------------- control entry points

  scan(body) { return this.pairing.scan(body); }
  kill(body) { return this.faults.kill(body); }

  state() {
    const now = Date.now();
    return {
      now, config: this.config, rootPublic: this.identity.rootPublic.toString('hex'),
      counters: this.counters, maxConcurrentAnyDevice: this.devices.maxConcurrent(), devices: this.devices.state(),
      connections: [...this.conns.values()].map(c => ({
        id: c.id, kind: c.kind, stage: c.stage, jid: c.jid, silent: c.silent, ageMs: now - c.openedAt,
        ...(c.kind === 'registration' ? { currentRefIndex: this.pairing.currentRefIndex(c, now), refs: c.refs.length } : {})
      })),
      pendingFaults: this.faults.pending,
      pendingLinkCodes: this.linkCodes.state(now),
      contacts: this.contacts.state(), offlineHeld: this.mailbox.held,
      lastEventSeq: this.eventSeq
    };
  }
}
