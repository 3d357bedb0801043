// WhatsApp Web server simulator: WebSocket endpoint, per-connection state machine, device registry.
// Protocol facts: /work/shared/notes/whatsapp-web-simulator.md (cited as "notes §N").
import http from 'node:http';
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { B, ws as wsPkg } from './baileys.mjs';
import { ServerNoise, makeServerIdentity } from './noise.mjs';
import { PhoneAccount, parseQr, QrParseError } from './phone.mjs';
import { LinkCodes } from './link_code.mjs';

const { getBinaryNodeChild, getBinaryNodeChildren } = B;
const S_WA = 's.whatsapp.net';
const nowSec = () => String(Math.floor(Date.now() / 1000));

export const KILL_VARIANTS = ['401', '440', '500', '503', '515', 'stream_end', 'tcp_drop', 'ws_close', 'silent', 'device_removed'];
export const FAULTS = ['refuse', 'stall_handshake', 'silent', 'tcp_drop_after_handshake', 'login_failure', 'stream_error'];

export const DEFAULT_CONFIG = {
  qrRefs: 6, // refs per <pair-device>, like WhatsApp
  qrFirstMs: 60000, // how long the first ref is current (Baileys' own default qrTimeout)
  qrNextMs: 20000, // how long each later ref is current
  closeGraceMs: 1000, // after a stream:error the server force-closes if the client has not
  pairReplyTimeoutMs: 10000, // wait for <pair-device-sign>
  preKeysOnNewDevice: 0 // what <count> reports before the first upload (0 => Baileys uploads 812)
};

/** A user-facing error of the control API: carries the code and an HTTP status. */
export class SimError extends Error {
  constructor(code, message, status = 409, extra = {}) {
    super(message);
    this.code = code;
    this.status = status;
    this.extra = extra;
  }
}

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
      // a non-101 response (notes §3.3: Baileys hangs).
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
    this.devices = new Map(); // jid -> Device
    this.accounts = new Map(); // phone -> PhoneAccount
    this.refs = new Map(); // ref -> { conn, index }
    this.faults = []; // queue of { fault, remaining, ...params }
    this.events = [];
    this.eventSeq = 0;
    this.nextPhone = 15550000001;
    this.counters = {
      upgrades: 0, connections: 0, handshakes: 0, registrations: 0, qrRefsIssued: 0,
      scans: 0, scanFailures: 0, pairings: 0, logins: 0, loginFailures: 0,
      conflicts: 0, conflictsFromDuplicates: 0, kills: {}, faultsApplied: {},
      preKeyUploads: 0, pings: 0, iqs: 0, linkCodeRequests: 0, codeEntries: 0, codeEntryFailures: 0
    };
    this.linkCodes = new LinkCodes(this); // pairing by phone-number code (link_code.mjs)
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

  // ---------------------------------------------------------------- faults

  addFault({ fault, count = 1, ...params }) {
    if (!FAULTS.includes(fault)) throw new SimError('bad_fault', `fault must be one of ${FAULTS.join(', ')}`, 400);
    this.faults.push({ fault, remaining: count, ...params });
    return this.faults;
  }

  takeFault() {
    const f = this.faults[0];
    if (!f) return null;
    if (--f.remaining <= 0) this.faults.shift();
    this.counters.faultsApplied[f.fault] = (this.counters.faultsApplied[f.fault] ?? 0) + 1;
    return f;
  }

  // ---------------------------------------------------------------- transport

  onUpgrade(req, socket, head) {
    this.counters.upgrades++;
    const path = new URL(req.url, 'http://x').pathname;
    // Faults are bound to the next upgrade on /ws/chat, in queue order.
    const fault = path === '/ws/chat' ? this.takeFault() : null;
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
        this.onNode(conn, frame);
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
    if (payload.devicePairingData) return this.onRegistration(conn, payload);
    return this.onLogin(conn, payload);
  }

  // ---------------------------------------------------------------- registration + QR

  onRegistration(conn, payload) {
    const d = payload.devicePairingData;
    conn.kind = 'registration';
    conn.reg = { identityPub: Buffer.from(d.eIdent), noisePub: conn.noise.clientNoisePub, pushName: payload.pushName };
    this.counters.registrations++;
    const refs = Array.from({ length: this.config.qrRefs }, () => `2@${randomBytes(30).toString('base64')}`);
    conn.refs = refs;
    conn.refTimes = { first: this.config.qrFirstMs, next: this.config.qrNextMs };
    refs.forEach((ref, index) => this.refs.set(ref, { conn, index }));
    this.counters.qrRefsIssued += refs.length;
    const id = `pd-${conn.id}`;
    // Baileys starts its first QR timer right after it acks this iq; anchor our clock then too.
    conn.refAnchor = Date.now();
    this.waitForIq(conn, id, 60000).then(() => { conn.refAnchor = Date.now(); }, () => {});
    this.send(conn, {
      tag: 'iq', attrs: { from: S_WA, type: 'set', id, xmlns: 'md' },
      content: [{ tag: 'pair-device', attrs: {}, content: refs.map(r => ({ tag: 'ref', attrs: {}, content: Buffer.from(r) })) }]
    });
    this.event('registration', { conn: conn.id, refs: refs.length });
  }

  /** Index of the ref the client is showing now, -1 once all have run out. */
  currentRefIndex(conn, at = Date.now()) {
    const el = at - conn.refAnchor;
    if (el < conn.refTimes.first) return 0;
    const k = 1 + Math.floor((el - conn.refTimes.first) / Math.max(1, conn.refTimes.next));
    return k < conn.refs.length ? k : -1;
  }

  scan({ qr, pushName, phone } = {}) {
    return this.phoneAction('scans', 'scanFailures', 'scan_failed', () => this.doScan({ qr, pushName, phone }));
  }

  /** Count a phone action (scan, code entry) and its failures; a failure is also an event. */
  async phoneAction(counter, failCounter, failEvent, fn) {
    this.counters[counter]++;
    try {
      return await fn();
    } catch (err) {
      this.counters[failCounter]++;
      this.event(failEvent, { error: err.code ?? 'error', message: err.message });
      throw err;
    }
  }

  async doScan({ qr, pushName, phone }) {
    let parsed;
    try {
      parsed = parseQr(qr);
    } catch (e) {
      if (e instanceof QrParseError) throw new SimError('bad_qr', e.message, 400);
      throw e;
    }
    const entry = this.refs.get(parsed.ref);
    if (!entry) throw new SimError('unknown_ref', 'this QR was not issued by this simulator', 404);
    const { conn, index } = entry;
    if (conn.closed) throw new SimError('connection_closed', 'the socket that showed this QR is gone', 409);
    if (conn.pairing) throw new SimError('already_paired', 'this registration socket already paired', 409);
    const cur = this.currentRefIndex(conn);
    // Baileys starts its QR timer just before we see its ack, so it may rotate a few ms before
    // our clock does: a scan of the *next* ref within 250 ms of its start is accepted.
    const early = index === cur + 1 && this.currentRefIndex(conn, Date.now() + 250) === index;
    if (cur !== index && !early) {
      // Like a phone: a QR that is not the one currently on screen is rejected, nothing pairs.
      throw new SimError(cur === -1 || index < cur ? 'qr_expired' : 'qr_not_current',
        `ref #${index} is not current (current: ${cur})`, 409, { refIndex: index, currentIndex: cur });
    }
    if (!parsed.noisePub.equals(conn.reg.noisePub) || !parsed.identityPub.equals(conn.reg.identityPub)) {
      throw new SimError('key_mismatch', 'QR keys do not match the registering socket', 409);
    }
    const account = this.accountFor(phone, pushName);
    const linked = await this.linkDevice(conn, { account, ...parsed, via: 'qr' });
    return { ...linked, refIndex: index };
  }

  /** The phone's account: `phone` links another device of that number; without it, a new account. */
  accountFor(phone, pushName) {
    const p = String(phone ?? this.nextPhone++);
    let account = this.accounts.get(p);
    if (!account) this.accounts.set(p, account = new PhoneAccount(p, pushName ?? `Sim ${p}`));
    if (pushName) account.pushName = pushName;
    return account;
  }

  /**
   * The phone approved this registration socket (QR scanned or link code confirmed): pair-success on
   * that same socket (notes §3.9), HMAC'd with the companion's adv secret, check <pair-device-sign>,
   * register the device, then 515.
   */
  async linkDevice(conn, { account, identityPub, noisePub, advSecret, platformId, via }) {
    conn.pairing = true;
    const id = `ps-${conn.id}`;
    const pending = account.buildPairSuccess({ id, identityPub, advSecret });
    const t0 = Date.now();
    const replyP = this.waitForIq(conn, id, this.config.pairReplyTimeoutMs);
    this.send(conn, pending.node);
    const reply = await replyP;
    const signMs = Date.now() - t0;
    const bad = account.checkPairDeviceSign(reply, pending, identityPub);
    if (bad) {
      this.sendAndClose(conn, { tag: 'failure', attrs: { reason: '401' } });
      throw new SimError('bad_pair_device_sign', bad, 502);
    }
    const dev = {
      jid: pending.jid, lid: pending.lid, phone: account.phone, device: pending.device,
      pushName: account.pushName, noisePub, identityPub, via,
      preKeys: this.config.preKeysOnNewDevice, removed: false, live: new Map(), maxConcurrent: 0,
      logins: 0, conflicts: 0, pairedAt: Date.now(), lastLoginAt: null, platformId
    };
    this.devices.set(dev.jid, dev);
    conn.jid = dev.jid;
    this.counters.pairings++;
    this.event('paired', { conn: conn.id, jid: dev.jid, lid: dev.lid, via, signMs });
    // WhatsApp then asks the companion to reconnect; Baileys reports 515 "restart required".
    this.sendAndClose(conn, { tag: 'stream:error', attrs: { code: '515' } });
    return {
      ok: true, jid: dev.jid, lid: dev.lid, phone: dev.phone, device: dev.device,
      pushName: dev.pushName, conn: conn.id, pairSuccessToSignMs: signMs
    };
  }

  // ---------------------------------------------------------------- login

  onLogin(conn, payload) {
    conn.kind = 'login';
    const jid = `${String(payload.username)}:${payload.device ?? 0}@s.whatsapp.net`;
    const dev = this.devices.get(jid);
    let reason = null;
    if (!dev) reason = 'unknown_device';
    else if (dev.removed) reason = 'device_removed';
    else if (!conn.noise.clientNoisePub.equals(dev.noisePub)) reason = 'noise_key_mismatch';
    else if (conn.fault?.fault === 'login_failure') reason = 'fault';
    if (reason) {
      this.counters.loginFailures++;
      const code = reason === 'fault' ? String(conn.fault.code ?? 401) : '401';
      this.event('login_failed', { conn: conn.id, jid, reason, code });
      return this.sendAndClose(conn, { tag: 'failure', attrs: { reason: code } });
    }
    conn.jid = jid;
    // WhatsApp keeps one session per device: the newcomer wins, the old one gets
    // <conflict type=replaced/> (Baileys: 440). Count the overlap so duplicates are visible.
    const concurrent = dev.live.size + 1;
    dev.maxConcurrent = Math.max(dev.maxConcurrent, concurrent);
    for (const old of dev.live.values()) {
      this.counters.conflicts++;
      this.counters.conflictsFromDuplicates++;
      dev.conflicts++;
      this.event('conflict', { jid, replaced: old.id, by: conn.id });
      dev.live.delete(old.id);
      this.sendAndClose(old, { tag: 'stream:error', attrs: {}, content: [{ tag: 'conflict', attrs: { type: 'replaced' } }] });
    }
    dev.live.set(conn.id, conn);
    dev.logins++;
    dev.lastLoginAt = Date.now();
    this.counters.logins++;
    this.event('login', { conn: conn.id, jid, concurrent });
    this.send(conn, {
      tag: 'success',
      attrs: { t: nowSec(), lid: dev.lid, props: '1', abprops: '1', location: 'sim', creation: String(Math.floor(dev.pairedAt / 1000)) }
    });
  }

  // ---------------------------------------------------------------- stanzas

  /** Hand a node to whoever waits for it on this connection (waitForIq); false if nobody does. */
  resolveWaiter(conn, key, node) {
    const w = conn.waiters.get(key);
    if (w) { conn.waiters.delete(key); w.resolve(node); }
    return Boolean(w);
  }

  onNode(conn, node) {
    // An ack of a notification we sent may be awaited (link_code.mjs) under `ack:<id>`.
    if (node.tag === 'ack') return this.resolveWaiter(conn, `ack:${node.attrs.id}`, node);
    if (node.tag !== 'iq') return; // presence, ib (unified_session): no answer needed
    const { type, id, xmlns } = node.attrs;
    if (type === 'result' || type === 'error') return this.resolveWaiter(conn, id, node);
    this.counters.iqs++;
    const child = Array.isArray(node.content) ? node.content[0] : undefined;
    const result = (content) => this.send(conn, { tag: 'iq', attrs: { from: S_WA, type: 'result', id }, ...(content ? { content } : {}) });
    const dev = conn.jid && this.devices.get(conn.jid);
    switch (`${xmlns}/${type}/${child?.tag ?? ''}`) {
      case 'encrypt/get/count':
        return result([{ tag: 'count', attrs: { value: String(dev?.preKeys ?? 0) } }]);
      case 'encrypt/set/registration': {
        const n = getBinaryNodeChildren(getBinaryNodeChild(node, 'list'), 'key').length;
        if (dev) dev.preKeys += n;
        this.counters.preKeyUploads++;
        this.event('prekeys_uploaded', { conn: conn.id, jid: conn.jid, count: n });
        return result();
      }
      case 'encrypt/get/digest':
        // Baileys only checks a <digest> child exists; without it it re-uploads pre-keys.
        return result([{ tag: 'digest', attrs: {}, content: [{ tag: 'type', attrs: {}, content: Buffer.from([5]) }] }]);
      case 'passive/set/active':
        result();
        // <offline count=0> makes Baileys set receivedPendingNotifications (notes §1 phase 4).
        return this.send(conn, { tag: 'ib', attrs: { from: S_WA }, content: [{ tag: 'offline', attrs: { count: '0' } }] });
      case 'abt/get/props':
        return result([{ tag: 'props', attrs: { protocol: '1', hash: 'sim' }, content: [{ tag: 'prop', attrs: { name: 'sim', value: '1' } }] }]);
      case 'blocklist/get/':
      case 'blocklist/get/list':
        return result([{ tag: 'list', attrs: {} }]);
      case 'privacy/get/privacy':
        return result([{ tag: 'privacy', attrs: {}, content: ['last', 'online', 'profile', 'status', 'readreceipts', 'groupadd']
          .map(name => ({ tag: 'category', attrs: { name, value: 'all' } })) }]);
      case 'md/set/link_code_companion_reg':
        return this.linkCodes.onIq(conn, node);
      case 'w:p/get/ping':
        this.counters.pings++;
        return result();
      default:
        // Anything else gets an empty result so no Baileys query waits for its 60 s timeout.
        return result();
    }
  }

  // ---------------------------------------------------------------- kill

  findDevice({ device, jid }) {
    const key = jid ?? device;
    if (!key) throw new SimError('bad_request', 'give device or jid', 400);
    const s = String(key);
    if (this.devices.has(s)) return this.devices.get(s);
    for (const d of this.devices.values()) {
      // Accept "phone:dev", "phone:dev@s.whatsapp.net", the LID, or a bare phone number.
      if (d.jid.startsWith(`${s}@`) || d.lid === s || d.lid.startsWith(`${s}@`) || d.phone === s) return d;
    }
    throw new SimError('unknown_device', `no device ${s}`, 404);
  }

  kill({ device, jid, conn: connId, variant } = {}) {
    variant = String(variant ?? '');
    if (!KILL_VARIANTS.includes(variant)) throw new SimError('bad_variant', `variant must be one of ${KILL_VARIANTS.join(', ')}`, 400);
    let targets;
    let dev = null;
    if (connId != null) {
      const c = this.conns.get(Number(connId));
      if (!c) throw new SimError('unknown_conn', `no live connection ${connId}`, 404);
      targets = [c];
      dev = c.jid ? this.devices.get(c.jid) : null;
    } else {
      dev = this.findDevice({ device, jid });
      targets = [...dev.live.values()];
      if (!targets.length) throw new SimError('no_live_connection', `${dev.jid} has no live connection`, 409);
    }
    this.counters.kills[variant] = (this.counters.kills[variant] ?? 0) + 1;
    const streamError = (attrs, content) => ({ tag: 'stream:error', attrs, ...(content ? { content } : {}) });
    for (const c of targets) {
      switch (variant) {
        case '401': // "logged out from the phone": the creds stop working
          if (dev) dev.removed = true;
          this.sendAndClose(c, { tag: 'failure', attrs: { reason: '401' } });
          break;
        case 'device_removed':
          if (dev) dev.removed = true;
          this.sendAndClose(c, streamError({ code: '401' }, [{ tag: 'conflict', attrs: { type: 'device_removed' } }]));
          break;
        case '440':
          this.counters.conflicts++;
          if (dev) dev.conflicts++;
          this.sendAndClose(c, streamError({}, [{ tag: 'conflict', attrs: { type: 'replaced' } }]));
          break;
        case '500': case '503': case '515':
          this.sendAndClose(c, streamError({ code: variant }));
          break;
        case 'stream_end':
          this.sendAndClose(c, { tag: 'xmlstreamend', attrs: {} });
          break;
        case 'tcp_drop': // no close frame, no FIN handshake: the socket is destroyed
          c.ws.terminate();
          break;
        case 'ws_close':
          c.ws.close(1000);
          break;
        case 'silent': // keep the socket, never send or answer again (client: 408 after keepAlive + 5 s)
          c.silent = true;
          break;
      }
      this.event('kill', { conn: c.id, jid: c.jid, variant });
    }
    return { ok: true, variant, jid: dev?.jid ?? null, connections: targets.map(c => c.id) };
  }

  // ---------------------------------------------------------------- state

  state() {
    const devices = {};
    let maxConcurrent = 0;
    for (const d of this.devices.values()) {
      maxConcurrent = Math.max(maxConcurrent, d.maxConcurrent);
      devices[d.jid] = {
        jid: d.jid, lid: d.lid, phone: d.phone, device: d.device, pushName: d.pushName,
        via: d.via, removed: d.removed, live: d.live.size, liveConnections: [...d.live.keys()],
        maxConcurrent: d.maxConcurrent, logins: d.logins, conflicts: d.conflicts, preKeys: d.preKeys,
        pairedAt: d.pairedAt, lastLoginAt: d.lastLoginAt
      };
    }
    const now = Date.now();
    return {
      now, config: this.config, rootPublic: this.identity.rootPublic.toString('hex'),
      counters: this.counters, maxConcurrentAnyDevice: maxConcurrent, devices,
      connections: [...this.conns.values()].map(c => ({
        id: c.id, kind: c.kind, stage: c.stage, jid: c.jid, silent: c.silent, ageMs: now - c.openedAt,
        ...(c.kind === 'registration' ? { currentRefIndex: this.currentRefIndex(c, now), refs: c.refs.length } : {})
      })),
      pendingFaults: this.faults,
      pendingLinkCodes: this.linkCodes.state(now),
      lastEventSeq: this.eventSeq
    };
  }
}
