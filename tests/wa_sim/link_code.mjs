// Linking by phone-number code ("Link with phone number instead"): Baileys' requestPairingCode.
// Companion side: lib/Socket/socket.js requestPairingCode, lib/Socket/messages-recv.js
// 'link_code_companion_reg' + decipherLinkPublicKey. The phone's side is written here with node:crypto
// (PBKDF2, AES-CTR/GCM, HKDF), independently of Baileys' helpers, so a mismatch would show.
//
//  companion -> server  iq set md <link_code_companion_reg stage=companion_hello jid=PHONE@s.whatsapp.net>
//                         wrapped companion ephemeral pub = salt32 | iv16 | AES-CTR(pub, PBKDF2(code, salt))
//                         companion_server_auth_key_pub (noise pub), platform id/display, nonce
//  server -> companion  iq result <link_code_companion_reg><link_code_pairing_ref>REF</></>
//  (user types the code on the phone: POST /enter-code)
//  server -> companion  <notification type=link_code_companion_reg><link_code_companion_reg stage=primary_hello>
//                         wrapped primary ephemeral pub, primary_identity_pub, link_code_pairing_ref
//  companion -> server  iq set md <link_code_companion_reg stage=companion_finish> key bundle
//                         = salt32 | iv12 | AES-GCM(companionIdentity | primaryIdentity | random32,
//                           HKDF(sharedEph, salt, 'link_code_pairing_key_bundle_encryption_key')),
//                         companion_identity_public, link_code_pairing_ref
//  phone decrypts the bundle: a wrong code gives another shared key, so GCM fails -> iq error, nothing
//  links, the companion keeps its registration socket (WA Web lets the user retype the code). Right code:
//  iq result, then the QR flow's pair-success (HMAC key = HKDF(sharedEph | sharedIdentity | random,
//  'adv_secret')), pair-device-sign check and 515 (pairing.mjs linkDevice).
import { createCipheriv, createDecipheriv, hkdfSync, pbkdf2, randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { B } from './baileys.mjs';
import { SimError } from './errors.mjs';

const { Curve, getBinaryNodeChild, getBinaryNodeChildBuffer, getBinaryNodeChildString } = B;
const S_WA = 's.whatsapp.net';
const FINISH = 'link_code_companion_finish'; // key of the conn waiter for the companion_finish iq
const pbkdf2Async = promisify(pbkdf2);

/** PBKDF2-SHA256(code, salt, 2 << 16, 32): Baileys' derivePairingCodeKey (WebCrypto there). */
const codeKey = (code, salt) => pbkdf2Async(Buffer.from(code, 'utf8'), salt, 2 << 16, 32, 'sha256');
const ctr = (key, iv, data) => {
  const c = createCipheriv('aes-256-ctr', key, iv);
  return Buffer.concat([c.update(data), c.final()]);
};
const hkdf = (ikm, info, salt = Buffer.alloc(0)) => Buffer.from(hkdfSync('sha256', ikm, salt, info, 32));

/** What a phone's code field accepts: case and the dash/spaces of "ABCD-1234" do not matter. */
export function normalizeCode(code) {
  const c = String(code ?? '').toUpperCase().replace(/[\s-]/g, '');
  if (!/^[0-9A-Z]{8}$/.test(c)) throw new SimError('bad_code', 'code must be 8 letters/digits, e.g. ABCD-1234', 400);
  return c;
}

export class LinkCodes {
  constructor(sim) {
    this.sim = sim;
    this.pending = new Map(); // phone -> { conn, ref, wrappedCompanionPub, platformId, display, requestedAt, attempts }
  }

  state(now = Date.now()) {
    return [...this.pending.entries()].map(([phone, p]) => ({
      phone, conn: p.conn.id, live: !p.conn.closed, attempts: p.attempts, platform: p.display, ageMs: now - p.requestedAt
    }));
  }

  iqAnswer(conn, id, type, content) {
    this.sim.send(conn, { tag: 'iq', attrs: { from: S_WA, type, id }, ...(content ? { content } : {}) });
  }

  iqError(conn, id, code, text) {
    this.iqAnswer(conn, id, 'error', [{ tag: 'error', attrs: { code: String(code), text } }]);
  }

  /** `md/set/link_code_companion_reg` from a companion: the hello (a code request) or the finish. */
  onIq(conn, node) {
    const reg = getBinaryNodeChild(node, 'link_code_companion_reg');
    const { id } = node.attrs;
    if (reg.attrs.stage === 'companion_finish') {
      // enterCode answers it once the phone has checked the bundle; nobody waiting: a stray finish.
      if (!this.sim.resolveWaiter(conn, FINISH, node)) this.iqError(conn, id, 404, 'item-not-found');
      return;
    }
    const phone = String(reg.attrs.jid ?? '').split('@')[0];
    const wrapped = getBinaryNodeChildBuffer(reg, 'link_code_pairing_wrapped_companion_ephemeral_pub');
    const noisePub = getBinaryNodeChildBuffer(reg, 'companion_server_auth_key_pub');
    let bad = null;
    if (reg.attrs.stage !== 'companion_hello') bad = `unknown stage ${reg.attrs.stage}`;
    else if (conn.kind !== 'registration' || conn.pairing) bad = 'not a registration socket waiting to pair';
    else if (!/^\d{6,15}$/.test(phone)) bad = `bad jid ${reg.attrs.jid}`;
    else if (wrapped?.length !== 80) bad = 'wrapped companion ephemeral key must be 80 bytes';
    else if (!noisePub || !Buffer.from(noisePub).equals(conn.noise.clientNoisePub)) bad = 'companion_server_auth_key_pub is not this socket\'s noise key';
    if (bad) {
      this.sim.event('link_code_rejected', { conn: conn.id, reason: bad });
      return this.iqError(conn, id, 400, 'bad-request');
    }
    const ref = randomBytes(16).toString('hex');
    this.pending.set(phone, {
      conn, ref, wrappedCompanionPub: Buffer.from(wrapped), requestedAt: Date.now(), attempts: 0,
      platformId: getBinaryNodeChildString(reg, 'companion_platform_id') ?? '',
      display: getBinaryNodeChildString(reg, 'companion_platform_display') ?? ''
    });
    this.sim.counters.linkCodeRequests++;
    this.sim.event('link_code_requested', { conn: conn.id, phone });
    this.iqAnswer(conn, id, 'result', [{ tag: 'link_code_companion_reg', attrs: {},
      content: [{ tag: 'link_code_pairing_ref', attrs: {}, content: Buffer.from(ref) }] }]);
  }

  /** POST /enter-code: the user types the companion's code on the phone of `phone`. */
  enterCode({ phone, code, pushName } = {}) {
    return this.sim.pairing.phoneAction('codeEntries', 'codeEntryFailures', 'code_entry_failed',
      () => this.doEnter({ phone, code, pushName }));
  }

  async doEnter({ phone, code, pushName }) {
    const number = String(phone ?? '').replace(/[\s()+.-]/g, '');
    if (!/^\d{6,15}$/.test(number)) throw new SimError('bad_request', 'phone must be the number the companion gave (digits)', 400);
    const typed = normalizeCode(code);
    const p = this.pending.get(number);
    if (!p) throw new SimError('no_pending_request', `no companion asked for a link code for ${number}`, 404);
    const { conn } = p;
    if (conn.closed) {
      this.pending.delete(number);
      throw new SimError('connection_closed', 'the socket that asked for this code is gone', 409);
    }
    if (conn.pairing) throw new SimError('already_paired', 'this companion already paired', 409);
    // Set before the first await (the PBKDF2 below): two entries at once must not both send primary_hello.
    if (p.entering) throw new SimError('code_entry_in_progress', 'a code entry for this companion is running', 409);
    p.entering = true;
    p.attempts++;
    try {
      return await this.exchange(number, p, typed, pushName);
    } catch (err) {
      if (conn.closed && this.pending.get(number) === p) this.pending.delete(number); // closed meanwhile
      throw err;
    } finally {
      p.entering = false;
    }
  }

  /** primary_hello -> companion_finish -> the phone's verdict -> (right code) pair-success. */
  async exchange(number, p, typed, pushName) {
    const { conn } = p;
    const account = this.sim.pairing.accountFor(number, pushName);
    // The phone unwraps the companion's ephemeral key with the typed code (AES-CTR: a wrong code
    // silently gives another key) and wraps its own with the same code.
    const [salt, iv] = [randomBytes(32), randomBytes(16)];
    const [companionKey, primaryKey] = await Promise.all([codeKey(typed, p.wrappedCompanionPub.subarray(0, 32)), codeKey(typed, salt)]);
    const companionEphPub = ctr(companionKey, p.wrappedCompanionPub.subarray(32, 48), p.wrappedCompanionPub.subarray(48, 80));
    const eph = Curve.generateKeyPair();
    const finishP = this.sim.waitForIq(conn, FINISH, this.sim.config.pairReplyTimeoutMs).catch((err) => {
      throw err.code === 'pair_timeout' ? new SimError('pair_timeout', 'the companion sent no companion_finish', 504) : err;
    });
    // The companion acks the notification once its handler is done (companion_finish answered and
    // handled): the phone's step is over then, so /enter-code answers after it (bounded).
    const nid = `lc-${conn.id}-${p.attempts}`;
    const ackP = this.sim.waitForIq(conn, `ack:${nid}`, this.sim.config.pairReplyTimeoutMs).then(() => true, () => false);
    this.sim.send(conn, {
      tag: 'notification', attrs: { from: S_WA, type: 'link_code_companion_reg', id: nid, t: String(Math.floor(Date.now() / 1000)) },
      content: [{ tag: 'link_code_companion_reg', attrs: { stage: 'primary_hello' }, content: [
        { tag: 'link_code_pairing_wrapped_primary_ephemeral_pub', attrs: {}, content: Buffer.concat([salt, iv, ctr(primaryKey, iv, eph.public)]) },
        { tag: 'primary_identity_pub', attrs: {}, content: account.accountKey.public },
        { tag: 'link_code_pairing_ref', attrs: {}, content: Buffer.from(p.ref) }
      ] }]
    });
    const finish = await finishP;
    // A QR scan may have paired this socket, or it may have closed, while the phone waited.
    if (conn.closed) throw new SimError('connection_closed', 'the socket that asked for this code is gone', 409);
    if (conn.pairing) throw new SimError('already_paired', 'this companion already paired', 409);
    const opened = this.openBundle(finish, { p, conn, account, eph, companionEphPub });
    if (opened.error) {
      // The phone could not open the bundle: it shows "incorrect code"; nothing links, the companion's
      // companion_finish query fails and it keeps waiting (the user may type the code again).
      this.iqError(conn, finish.attrs.id, 401, 'not-authorized');
      throw new SimError('wrong_code', `${opened.error}: the code does not match the one the companion shows; nothing was linked`,
        400, { attempts: p.attempts, companionAcked: await ackP });
    }
    conn.pairing = true; // from here on no QR scan or second entry can pair this socket
    this.iqAnswer(conn, finish.attrs.id, 'result');
    const companionAcked = await ackP;
    this.pending.delete(number);
    const linked = await this.sim.pairing.linkDevice(conn, {
      account, identityPub: conn.reg.identityPub, noisePub: conn.reg.noisePub,
      advSecret: opened.advSecret, platformId: p.platformId, via: 'code'
    });
    return { ...linked, linked: true, attempts: p.attempts, companionAcked };
  }

  /** The phone's check of companion_finish. Returns { advSecret } or { error }. */
  openBundle(finish, { p, conn, account, eph, companionEphPub }) {
    const reg = getBinaryNodeChild(finish, 'link_code_companion_reg');
    const bundle = Buffer.from(getBinaryNodeChildBuffer(reg, 'link_code_pairing_wrapped_key_bundle') ?? []);
    const companionIdentity = Buffer.from(getBinaryNodeChildBuffer(reg, 'companion_identity_public') ?? []);
    if (Buffer.from(getBinaryNodeChildBuffer(reg, 'link_code_pairing_ref') ?? []).toString() !== p.ref) return { error: 'ref mismatch' };
    if (!companionIdentity.equals(conn.reg.identityPub)) return { error: 'companion identity is not the registering socket\'s' };
    if (bundle.length !== 32 + 12 + 96 + 16) return { error: `key bundle has ${bundle.length} bytes` };
    const ephShared = Buffer.from(Curve.sharedKey(eph.private, companionEphPub));
    const key = hkdf(ephShared, 'link_code_pairing_key_bundle_encryption_key', bundle.subarray(0, 32));
    let plain;
    try {
      const d = createDecipheriv('aes-256-gcm', key, bundle.subarray(32, 44));
      d.setAuthTag(bundle.subarray(bundle.length - 16));
      plain = Buffer.concat([d.update(bundle.subarray(44, bundle.length - 16)), d.final()]);
    } catch {
      return { error: 'key bundle does not decrypt' };
    }
    if (!plain.subarray(0, 32).equals(companionIdentity) || !plain.subarray(32, 64).equals(account.accountKey.public)) {
      return { error: 'key bundle identities do not match' };
    }
    const identityShared = Buffer.from(Curve.sharedKey(account.accountKey.private, companionIdentity));
    return { advSecret: hkdf(Buffer.concat([ephShared, identityShared, plain.subarray(64, 96)]), 'adv_secret') };
  }
}
