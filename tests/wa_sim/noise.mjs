// Server side of WhatsApp's Noise XX handshake + frame transport.
// Baileys only ships the client half (makeNoiseHandler: fixed key direction, sends the intro),
// so this mirrors it from the other end. See PROTOCOL.md §1 "Transport" for the derivation.
import { B, realVerify } from './baileys.mjs';

const { Curve, hkdf, sha256, aesEncryptGCM, aesDecryptGCM, proto, NOISE_MODE, NOISE_WA_HEADER,
  encodeBinaryNode, decodeBinaryNode } = B;

const EMPTY = Buffer.alloc(0);
const ivFor = (counter) => {
  const iv = Buffer.alloc(12);
  iv.writeUInt32BE(counter, 8);
  return iv;
};

/**
 * Certificate chain: root -> intermediate (issuerSerial 0, the only serial Baileys accepts)
 * -> leaf (the server's static Noise key). A new intermediate and static key per simulator
 * process; only the root is fixed (keys/test-root.json) so clients can be told to trust it.
 */
export function makeServerIdentity(root) {
  const intermediate = Curve.generateKeyPair();
  const staticKey = Curve.generateKeyPair();
  const Details = proto.CertChain.NoiseCertificate.Details;
  // issuerSerial must be set explicitly: the proto is proto3-optional, an absent field decodes
  // as null and Baileys compares with `!== 0`.
  const interDetails = Details.encode({ serial: 1, issuerSerial: 0, key: intermediate.public }).finish();
  const leafDetails = Details.encode({ serial: 2, issuerSerial: 1, key: staticKey.public }).finish();
  const chain = {
    intermediate: { details: interDetails, signature: Curve.sign(root.private, interDetails) },
    leaf: { details: leafDetails, signature: Curve.sign(intermediate.private, leafDetails) }
  };
  // Self-check with a verifier that actually verifies, so the chain keeps working once
  // Baileys' Curve.verify is fixed (PROTOCOL.md §3.1).
  if (!realVerify(root.public, interDetails, chain.intermediate.signature) ||
      !realVerify(intermediate.public, leafDetails, chain.leaf.signature)) {
    throw new Error('simulator certificate chain does not verify (bug)');
  }
  return { staticKey, certChain: proto.CertChain.encode(chain).finish(), rootPublic: root.public };
}

/**
 * Per-connection Noise state. feed() takes raw WS bytes and returns decoded frames:
 * before transport, raw handshake frames (Buffer); after, BinaryNodes.
 */
export class ServerNoise {
  constructor(identity) {
    this.identity = identity;
    this.hash = Buffer.from(NOISE_MODE); // exactly 32 bytes, used as-is like the client
    this.salt = this.hash;
    this.key = this.hash;
    this.counter = 0;
    this.inBytes = EMPTY;
    this.introDone = false;
    this.routingInfo = null;
    this.transport = null; // { enc, dec, readCounter, writeCounter }
    this.clientNoisePub = null; // the client's static noise key (creds.noiseKey.public)
  }

  authenticate(data) {
    if (!this.transport) this.hash = sha256(Buffer.concat([this.hash, data]));
  }

  mixKey(dh) {
    const out = hkdf(Buffer.from(dh), 64, { salt: this.salt, info: '' });
    this.salt = Buffer.from(out.subarray(0, 32));
    this.key = Buffer.from(out.subarray(32));
    this.counter = 0;
  }

  encryptHs(plaintext) {
    const ct = aesEncryptGCM(plaintext, this.key, ivFor(this.counter++), this.hash);
    this.authenticate(ct);
    return ct;
  }

  decryptHs(ciphertext) {
    const pt = aesDecryptGCM(ciphertext, this.key, ivFor(this.counter++), this.hash);
    this.authenticate(ciphertext);
    return pt;
  }

  /** clientHello -> serverHello bytes (unframed). */
  respondHello(helloBytes) {
    const { clientHello } = proto.HandshakeMessage.decode(helloBytes);
    if (!clientHello?.ephemeral || clientHello.ephemeral.length !== 32) throw new Error('bad clientHello');
    this.clientEphemeral = Buffer.from(clientHello.ephemeral);
    this.authenticate(NOISE_WA_HEADER);
    this.authenticate(this.clientEphemeral);
    this.ephemeral = Curve.generateKeyPair();
    this.authenticate(this.ephemeral.public);
    this.mixKey(Curve.sharedKey(this.ephemeral.private, this.clientEphemeral));
    const staticEnc = this.encryptHs(this.identity.staticKey.public);
    this.mixKey(Curve.sharedKey(this.identity.staticKey.private, this.clientEphemeral));
    const payloadEnc = this.encryptHs(this.identity.certChain);
    return proto.HandshakeMessage.encode({
      serverHello: { ephemeral: this.ephemeral.public, static: staticEnc, payload: payloadEnc }
    }).finish();
  }

  /** clientFinish -> decoded ClientPayload; switches to transport mode. */
  acceptFinish(finishBytes) {
    const { clientFinish } = proto.HandshakeMessage.decode(finishBytes);
    if (!clientFinish?.static || !clientFinish?.payload) throw new Error('bad clientFinish');
    this.clientNoisePub = Buffer.from(this.decryptHs(clientFinish.static));
    this.mixKey(Curve.sharedKey(this.ephemeral.private, this.clientNoisePub));
    const payload = proto.ClientPayload.decode(this.decryptHs(clientFinish.payload));
    const out = hkdf(EMPTY, 64, { salt: this.salt, info: '' });
    // The client encrypts with the first half, so we decrypt with it and encrypt with the second.
    this.transport = {
      dec: Buffer.from(out.subarray(0, 32)), enc: Buffer.from(out.subarray(32)),
      readCounter: 0, writeCounter: 0
    };
    return payload;
  }

  /** Frame (and, in transport mode, encrypt) an outgoing buffer. The server sends no intro. */
  frame(data) {
    if (this.transport) {
      data = aesEncryptGCM(data, this.transport.enc, ivFor(this.transport.writeCounter++), EMPTY);
    }
    const out = Buffer.alloc(3 + data.length);
    out.writeUIntBE(data.length, 0, 3);
    Buffer.from(data).copy(out, 3);
    return out;
  }

  encodeNode(node) {
    return this.frame(encodeBinaryNode(node));
  }

  /**
   * Consume raw bytes; returns an array of frames. Transport frames are decrypted and decoded
   * into BinaryNodes; handshake frames are returned raw.
   */
  async feed(data) {
    this.inBytes = this.inBytes.length ? Buffer.concat([this.inBytes, data]) : Buffer.from(data);
    if (!this.introDone) {
      // Optional edge-routing prefix "ED",0,1,len24,routingInfo, then "WA",6,3.
      if (this.inBytes.length >= 2 && this.inBytes.subarray(0, 2).toString() === 'ED') {
        if (this.inBytes.length < 7) return [];
        const len = this.inBytes.readUIntBE(4, 3);
        if (this.inBytes.length < 7 + len + 4) return [];
        this.routingInfo = Buffer.from(this.inBytes.subarray(7, 7 + len));
        this.inBytes = this.inBytes.subarray(7 + len);
      }
      if (this.inBytes.length < 4) return [];
      if (!this.inBytes.subarray(0, 4).equals(NOISE_WA_HEADER)) throw new Error('bad intro header');
      this.inBytes = this.inBytes.subarray(4);
      this.introDone = true;
    }
    const frames = [];
    while (this.inBytes.length >= 3) {
      const size = this.inBytes.readUIntBE(0, 3);
      if (this.inBytes.length < size + 3) break;
      let frame = this.inBytes.subarray(3, size + 3);
      this.inBytes = this.inBytes.subarray(size + 3);
      if (this.transport) {
        const pt = aesDecryptGCM(frame, this.transport.dec, ivFor(this.transport.readCounter++), EMPTY);
        frames.push(await decodeBinaryNode(pt));
      } else {
        frames.push(Buffer.from(frame));
      }
    }
    return frames;
  }
}
