// Registration sockets and linking: <pair-device> refs (the QR), the phone's scan, and the
// pair-success / pair-device-sign exchange both QR and link-code pairing end with (PROTOCOL.md §1).
import { randomBytes } from 'node:crypto';
import { PhoneAccount, parseQr, QrParseError } from './phone.mjs';
import { SimError } from './errors.mjs';

const S_WA = 's.whatsapp.net';

export class Pairing {
  constructor(sim) {
    this.sim = sim;
    this.refs = new Map(); // ref -> { conn, index }
    this.accounts = new Map(); // phone -> PhoneAccount
    this.nextPhone = 15550000001;
  }

  /** A ClientPayload with devicePairingData: issue the refs, on the sim's clock (currentRefIndex). */
  onRegistration(conn, payload) {
    const { sim } = this;
    const d = payload.devicePairingData;
    conn.kind = 'registration';
    conn.reg = { identityPub: Buffer.from(d.eIdent), noisePub: conn.noise.clientNoisePub, pushName: payload.pushName };
    sim.counters.registrations++;
    const refs = Array.from({ length: sim.config.qrRefs }, () => `2@${randomBytes(30).toString('base64')}`);
    conn.refs = refs;
    conn.refTimes = { first: sim.config.qrFirstMs, next: sim.config.qrNextMs };
    refs.forEach((ref, index) => this.refs.set(ref, { conn, index }));
    sim.counters.qrRefsIssued += refs.length;
    const id = `pd-${conn.id}`;
    // Baileys starts its first QR timer right after it acks this iq; anchor our clock then too.
    conn.refAnchor = Date.now();
    sim.waitForIq(conn, id, 60000).then(() => { conn.refAnchor = Date.now(); }, () => {});
    sim.send(conn, {
      tag: 'iq', attrs: { from: S_WA, type: 'set', id, xmlns: 'md' },
      content: [{ tag: 'pair-device', attrs: {}, content: refs.map(r => ({ tag: 'ref', attrs: {}, content: Buffer.from(r) })) }]
    });
    sim.event('registration', { conn: conn.id, refs: refs.length });
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
    const { sim } = this;
    sim.counters[counter]++;
    try {
      return await fn();
    } catch (err) {
      sim.counters[failCounter]++;
      sim.event(failEvent, { error: err.code ?? 'error', message: err.message });
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
   * that same socket (PROTOCOL.md §3.9), HMAC'd with the companion's adv secret, check <pair-device-sign>,
   * register the device, then 515.
   */
  async linkDevice(conn, { account, identityPub, noisePub, advSecret, platformId, via }) {
    const { sim } = this;
    conn.pairing = true;
    const id = `ps-${conn.id}`;
    const pending = account.buildPairSuccess({ id, identityPub, advSecret });
    const t0 = Date.now();
    const replyP = sim.waitForIq(conn, id, sim.config.pairReplyTimeoutMs);
    sim.send(conn, pending.node);
    const reply = await replyP;
    const signMs = Date.now() - t0;
    const bad = account.checkPairDeviceSign(reply, pending, identityPub);
    if (bad) {
      sim.sendAndClose(conn, { tag: 'failure', attrs: { reason: '401' } });
      throw new SimError('bad_pair_device_sign', bad, 502);
    }
    const dev = sim.devices.add({
      jid: pending.jid, lid: pending.lid, phone: account.phone, device: pending.device, keyIndex: pending.keyIndex,
      pushName: account.pushName, noisePub, identityPub, via, platformId, preKeys: sim.config.preKeysOnNewDevice
    });
    conn.jid = dev.jid;
    sim.counters.pairings++;
    sim.event('paired', { conn: conn.id, jid: dev.jid, lid: dev.lid, via, signMs });
    // WhatsApp then asks the companion to reconnect; Baileys reports 515 "restart required".
    sim.sendAndClose(conn, { tag: 'stream:error', attrs: { code: '515' } });
    return {
      ok: true, jid: dev.jid, lid: dev.lid, phone: dev.phone, device: dev.device,
      pushName: dev.pushName, conn: conn.id, pairSuccessToSignMs: signMs
    };
  }
}
