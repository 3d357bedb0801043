// A simulated WhatsApp user's primary device (device 0): a phone number, a LID, its own Signal
// identity and store, built from Baileys' own Signal code (its libsignal repository over an
// in-memory key store), so what it encrypts and decrypts is what a real peer would. Used for the
// simulated contacts and for the phone of each simulated account. The server side of it (its
// uploaded bundle, its inbox) lives here too: the simulator plays both.
import { randomInt } from 'node:crypto';
import { B, libsignal } from './baileys.mjs';
import { Bundle } from './bundle.mjs';
import { decryptOnCopies } from '../../node_worker/src/signal-decrypt.mjs';

const { Curve, proto, initAuthCreds, addTransactionCapability, encodeWAMessage, unpadRandomMax16, DEFAULT_CONNECTION_CONFIG } = B;

// A WhatsApp client's libsignal never lets a failed decrypt attempt ratchet a session (libsignal-java decrypts on
// copies); the copy Baileys ships does (node_worker/src/signal-decrypt.mjs). The simulated phones and contacts get
// the same fix as the worker, so a Bad MAC in a test is the tenant's fault, not the simulator's.
decryptOnCopies(libsignal);

const quiet = { level: 'silent', trace() {}, debug() {}, info() {}, warn() {}, error() {}, fatal() {} };
quiet.child = () => quiet;

/** The SignalKeyStore interface ({get, set}) over plain maps, one per key type; setNow is synchronous. */
function memoryKeyStore() {
  const data = new Map();
  const bucket = (type) => data.get(type) ?? data.set(type, new Map()).get(type);
  const setNow = (changes) => {
    for (const [type, entries] of Object.entries(changes)) {
      const b = bucket(type);
      for (const [id, v] of Object.entries(entries)) v == null ? b.delete(id) : b.set(id, v);
    }
  };
  return {
    setNow,
    async get(type, ids) {
      const b = bucket(type);
      return Object.fromEntries(ids.filter(id => b.has(id)).map(id => [id, b.get(id)]));
    },
    async set(changes) { setNow(changes); }
  };
}

export const PRE_KEYS_PER_CONTACT = 50;

export class Contact {
  constructor({ phone, pushName, lidUser }) {
    this.phone = String(phone);
    this.lidUser = String(lidUser ?? 100000000000000 + randomInt(0, 2 ** 40));
    this.jid = `${this.phone}@s.whatsapp.net`;
    this.lid = `${this.lidUser}@lid`;
    this.pushName = pushName ?? `Contact ${this.phone}`;
    this.creds = initAuthCreds();
    this.store = memoryKeyStore();
    const keys = addTransactionCapability(this.store, quiet, { maxCommitRetries: 1, delayBetweenTriesMs: 0 });
    // Contacts never ask the server for LIDs: they address every peer device by its LID jid.
    this.signal = DEFAULT_CONNECTION_CONFIG.makeSignalRepository({ creds: this.creds, keys }, quiet, async () => []);
    this.bundle = null; // what it "uploaded" (newPreKeys)
    this.inbox = []; // what the contact decrypted from tenants
    this.receiptsIn = []; // receipts the server passed on from tenants
    this.retriesIn = []; // retry receipts from tenants (they could not decrypt)
    this.sent = []; // { id, to, type } of what it sent
    this.newPreKeys();
  }

  /** Generate one-time pre-keys (private halves in its store) and publish the bundle. */
  newPreKeys(n = PRE_KEYS_PER_CONTACT) {
    const start = (this.nextPreKeyId ??= 1);
    const pairs = {};
    const pub = [];
    for (let id = start; id < start + n; id++) {
      pairs[id] = Curve.generateKeyPair();
      pub.push({ id, value: Buffer.from(pairs[id].public) });
    }
    this.nextPreKeyId = start + n;
    this.store.setNow({ 'pre-key': pairs }); // synchronous: a bundle is never published before its keys
    const spk = this.creds.signedPreKey;
    const bundle = new Bundle({
      registrationId: this.creds.registrationId, identity: this.creds.signedIdentityKey.public,
      signedPreKey: { id: spk.keyId, value: Buffer.from(spk.keyPair.public), signature: Buffer.from(spk.signature) }, preKeys: pub
    });
    if (this.bundle) this.bundle.merge(bundle); else this.bundle = bundle;
    return this.bundle;
  }

  /**
   * Encrypt a proto.Message for one device (`addr`: its LID device jid). Without a session yet,
   * `takeBundle()` gives that device's bundle from the server (one pre-key used): pkmsg, then msg.
   */
  async encryptFor(addr, message, takeBundle) {
    if (!(await this.signal.validateSession(addr)).exists) {
      await this.signal.injectE2ESession({ jid: addr, session: takeBundle() });
    }
    return this.signal.encryptMessage({ jid: addr, data: encodeWAMessage(message) });
  }

  /** Decrypt what a tenant device (`addr`) sent; returns the proto.Message as sent (maybe a deviceSentMessage). */
  async decryptFrom(addr, type, ciphertext) {
    const padded = await this.signal.decryptMessage({ jid: addr, type, ciphertext });
    return proto.Message.decode(unpadRandomMax16(padded));
  }

  /** Forget the session with a device (what a receiver does before asking for a retry). */
  async dropSession(addr) {
    await this.signal.deleteSession([addr]);
  }

  state() {
    return {
      phone: this.phone, jid: this.jid, lid: this.lid, pushName: this.pushName,
      registrationId: this.creds.registrationId, preKeysLeft: this.bundle?.preKeys.size ?? 0,
      inbox: this.inbox.length, sent: this.sent.length, receiptsIn: this.receiptsIn.length, retriesIn: this.retriesIn.length
    };
  }
}

/** The text of a proto.Message (conversation or extendedTextMessage), or null. */
export const textOf = (m) => m?.conversation ?? m?.extendedTextMessage?.text ?? null;
