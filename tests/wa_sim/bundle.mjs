// Signal pre-key bundles as the server keeps them: what a device uploads (`iq xmlns=encrypt
// type=set`, Baileys' getNextPreKeysNode) and what a key fetch (`iq xmlns=encrypt type=get <key>`)
// returns, in the format Baileys' parseAndInjectE2ESessions reads. Each fetch hands out one
// one-time pre-key, like WhatsApp; without one left the bundle has only the signed pre-key.
import { B } from './baileys.mjs';

const { getBinaryNodeChild, getBinaryNodeChildren, getBinaryNodeChildBuffer, getBinaryNodeChildUInt,
  encodeBigEndian, KEY_BUNDLE_TYPE } = B;

export class Bundle {
  constructor({ registrationId, identity, signedPreKey, preKeys = [] }) {
    this.registrationId = registrationId; // number
    this.identity = Buffer.from(identity); // 32-byte Curve25519 public key
    this.signedPreKey = signedPreKey; // { id, value, signature }
    this.preKeys = new Map(preKeys.map(k => [k.id, k.value])); // id -> 32-byte public key
    this.handedOut = 0;
  }

  /** Parse an upload: <registration/><type/><identity/><list><key><id/><value/></key>…</list><skey/>. */
  static fromUpload(node) {
    const skey = getBinaryNodeChild(node, 'skey');
    const identity = getBinaryNodeChildBuffer(node, 'identity');
    if (!skey || identity?.length !== 32) throw new Error('pre-key upload without identity or skey');
    return new Bundle({
      registrationId: getBinaryNodeChildUInt(node, 'registration', 4),
      identity,
      signedPreKey: {
        id: getBinaryNodeChildUInt(skey, 'id', 3),
        value: Buffer.from(getBinaryNodeChildBuffer(skey, 'value')),
        signature: Buffer.from(getBinaryNodeChildBuffer(skey, 'signature'))
      },
      preKeys: Bundle.keysOf(node)
    });
  }

  static keysOf(node) {
    return getBinaryNodeChildren(getBinaryNodeChild(node, 'list'), 'key').map(k => ({
      id: getBinaryNodeChildUInt(k, 'id', 3), value: Buffer.from(getBinaryNodeChildBuffer(k, 'value'))
    }));
  }

  /** A later upload of the same device: new keys are added, identity and signed key replaced. */
  merge(other) {
    this.registrationId = other.registrationId;
    this.identity = other.identity;
    this.signedPreKey = other.signedPreKey;
    for (const [id, v] of other.preKeys) this.preKeys.set(id, v);
  }

  /** Remove and return one one-time pre-key (lowest id first), or undefined when none is left. */
  takePreKey() {
    const next = this.preKeys.keys().next();
    if (next.done) return undefined;
    const value = this.preKeys.get(next.value);
    this.preKeys.delete(next.value);
    this.handedOut++;
    return { id: next.value, value };
  }

  /** The fetch answer for `jid`: <user jid><registration/><type/><identity/><skey/>[<key/>]</user>. */
  userNode(jid) {
    const pre = this.takePreKey();
    return {
      tag: 'user', attrs: { jid },
      content: [
        { tag: 'registration', attrs: {}, content: encodeBigEndian(this.registrationId, 4) },
        { tag: 'type', attrs: {}, content: KEY_BUNDLE_TYPE },
        { tag: 'identity', attrs: {}, content: this.identity },
        { tag: 'skey', attrs: {}, content: [
          { tag: 'id', attrs: {}, content: encodeBigEndian(this.signedPreKey.id, 3) },
          { tag: 'value', attrs: {}, content: this.signedPreKey.value },
          { tag: 'signature', attrs: {}, content: this.signedPreKey.signature }
        ] },
        ...(pre ? [{ tag: 'key', attrs: {}, content: [
          { tag: 'id', attrs: {}, content: encodeBigEndian(pre.id, 3) },
          { tag: 'value', attrs: {}, content: pre.value }
        ] }] : [])
      ]
    };
  }

  /** The same bundle as libsignal's SessionBuilder.initOutgoing takes it (33-byte keys). */
  session() {
    const pre = this.takePreKey();
    const pub = B.generateSignalPubKey;
    return {
      registrationId: this.registrationId,
      identityKey: pub(this.identity),
      signedPreKey: { keyId: this.signedPreKey.id, publicKey: pub(this.signedPreKey.value), signature: this.signedPreKey.signature },
      ...(pre ? { preKey: { keyId: pre.id, publicKey: pub(pre.value) } } : {})
    };
  }
}
