// The simulated phone: the primary device that "scans" a companion's QR code.
// It owns the account signature key (ADV account key) and builds the pair-success identity
// exactly in the three layers Baileys' configureSuccessfulPairing unpacks (PROTOCOL.md §1 phase 2).
import { createHmac, randomInt } from 'node:crypto';
import { B, realVerify } from './baileys.mjs';
import { Contact } from './contact.mjs';

const { Curve, proto, WA_ADV_ACCOUNT_SIG_PREFIX, WA_ADV_DEVICE_SIG_PREFIX } = B;
export const QR_PREFIX = 'https://wa.me/settings/linked_devices#';

export class QrParseError extends Error {}

/**
 * Parse the string Baileys puts in connection.update.qr (and the daemon in GET /whatsapp/{t}/qr):
 * https://wa.me/settings/linked_devices#ref,noisePubB64,identityPubB64,advSecretB64,platformId
 */
export function parseQr(qr) {
  if (typeof qr !== 'string' || !qr.startsWith(QR_PREFIX)) {
    throw new QrParseError(`not a linked-devices QR (expected prefix ${QR_PREFIX})`);
  }
  const parts = qr.slice(QR_PREFIX.length).split(',');
  if (parts.length !== 5) throw new QrParseError(`QR has ${parts.length} fields, expected 5`);
  const [ref, noiseB64, identityB64, advB64, platformId] = parts;
  const noisePub = Buffer.from(noiseB64, 'base64');
  const identityPub = Buffer.from(identityB64, 'base64');
  const advSecret = Buffer.from(advB64, 'base64');
  if (noisePub.length !== 32 || identityPub.length !== 32 || advSecret.length !== 32) {
    throw new QrParseError('QR key fields have wrong lengths');
  }
  return { ref, noisePub, identityPub, advSecret, platformId };
}

/** A phone account: a number, a LID user, an ADV account key, its phone (device 0) and its linked devices. */
export class PhoneAccount {
  constructor(phone, pushName) {
    this.phone = String(phone);
    this.lidUser = String(100000000000000 + randomInt(0, 2 ** 40)); // 15-digit LID user
    this.accountKey = Curve.generateKeyPair();
    this.pushName = pushName ?? null;
    this.nextDevice = 1; // device 0 is the phone itself
    this.nextKeyIndex = 1;
    // The phone as a Signal device: companions fan their sent messages out to it (copies).
    this.device0 = new Contact({ phone: this.phone, lidUser: this.lidUser, pushName: this.pushName });
  }

  /**
   * Build the <pair-success> iq for a companion. Returns the node plus what the phone must
   * remember to check the pair-device-sign reply.
   */
  buildPairSuccess({ id, identityPub, advSecret, platform = 'android' }) {
    const device = this.nextDevice++;
    const keyIndex = this.nextKeyIndex++;
    const details = proto.ADVDeviceIdentity.encode({
      rawId: randomInt(1, 2 ** 31), timestamp: Math.floor(Date.now() / 1000), keyIndex,
      accountType: proto.ADVEncryptionType.E2EE, deviceType: proto.ADVEncryptionType.E2EE
    }).finish();
    const accountSignature = Curve.sign(this.accountKey.private,
      Buffer.concat([WA_ADV_ACCOUNT_SIG_PREFIX, details, identityPub]));
    if (!realVerify(this.accountKey.public, Buffer.concat([WA_ADV_ACCOUNT_SIG_PREFIX, details, identityPub]), accountSignature)) {
      throw new Error('phone produced an account signature that does not verify (bug)');
    }
    const signed = proto.ADVSignedDeviceIdentity.encode({
      details, accountSignatureKey: this.accountKey.public, accountSignature
    }).finish();
    // E2EE accounts: HMAC over the signed identity with no prefix, keyed by the QR's advSecret.
    const hmac = createHmac('sha256', advSecret).update(signed).digest();
    const identityHmac = proto.ADVSignedDeviceIdentityHMAC.encode({ details: signed, hmac }).finish();
    const jid = `${this.phone}:${device}@s.whatsapp.net`;
    const lid = `${this.lidUser}:${device}@lid`;
    const pairSuccessChildren = [
      { tag: 'device-identity', attrs: {}, content: identityHmac },
      { tag: 'platform', attrs: { name: platform } },
      { tag: 'device', attrs: { jid, lid } }
    ];
    // Baileys sets creds.me.name only from <biz name>; it is the cheap way to give the companion
    // a pushName without a history/app-state sync.
    if (this.pushName) pairSuccessChildren.push({ tag: 'biz', attrs: { name: this.pushName } });
    const node = {
      tag: 'iq',
      attrs: { from: 's.whatsapp.net', type: 'set', id, xmlns: 'md', t: String(Math.floor(Date.now() / 1000)) },
      content: [{ tag: 'pair-success', attrs: {}, content: pairSuccessChildren }]
    };
    return { node, device, keyIndex, details: Buffer.from(details), jid, lid };
  }

  /**
   * Check the companion's <pair-device-sign> reply: its deviceSignature must verify over
   * [6,1] || details || companionIdentityPub || accountPub with the companion identity key.
   * Returns null if fine, else a reason string.
   */
  checkPairDeviceSign(reply, pending, identityPub) {
    if (reply.attrs?.type !== 'result') return `reply type ${reply.attrs?.type}`;
    const sign = B.getBinaryNodeChild(reply, 'pair-device-sign');
    const idNode = sign && B.getBinaryNodeChild(sign, 'device-identity');
    if (!idNode || !Buffer.isBuffer(idNode.content) && !(idNode.content instanceof Uint8Array)) {
      return 'missing pair-device-sign/device-identity';
    }
    if (idNode.attrs['key-index'] !== String(pending.keyIndex)) return 'key-index mismatch';
    const signed = proto.ADVSignedDeviceIdentity.decode(idNode.content);
    if (!Buffer.from(signed.details).equals(pending.details)) return 'details changed';
    if (!signed.deviceSignature?.length) return 'no deviceSignature';
    const msg = Buffer.concat([WA_ADV_DEVICE_SIG_PREFIX, pending.details, identityPub, this.accountKey.public]);
    if (!realVerify(identityPub, msg, Buffer.from(signed.deviceSignature))) return 'deviceSignature does not verify';
    return null;
  }
}
