// The device registry: every companion the simulated phones linked, by jid.
import { SimError } from './errors.mjs';
import { Mailbox } from './mailbox.mjs';

export class Devices {
  constructor() {
    this.byJid = new Map(); // jid -> device
  }

  /** A device the phone just linked (pairing.mjs linkDevice). */
  add({ jid, lid, phone, device, keyIndex, pushName, noisePub, identityPub, via, platformId, preKeys }) {
    const dev = {
      jid, lid, phone, device, keyIndex, pushName, noisePub, identityPub, via, platformId,
      preKeys, // what <count> reports until the first upload (config preKeysOnNewDevice)
      bundle: null, queue: [], stats: Mailbox.stats(), removed: false, live: new Map(), maxConcurrent: 0,
      logins: 0, conflicts: 0, pairedAt: Date.now(), lastLoginAt: null
    };
    this.byJid.set(jid, dev);
    return dev;
  }

  /** One-time pre-keys the server still holds for the device (what <count> answers). */
  static preKeyCount(dev) {
    return dev.bundle ? dev.bundle.preKeys.size : dev.preKeys;
  }

  get(jid) {
    return this.byJid.get(jid);
  }

  values() {
    return this.byJid.values();
  }

  /** Accept "phone:dev", "phone:dev@s.whatsapp.net", the LID, or a bare phone number. */
  find({ device, jid }) {
    const key = jid ?? device;
    if (!key) throw new SimError('bad_request', 'give device or jid', 400);
    const s = String(key);
    if (this.byJid.has(s)) return this.byJid.get(s);
    for (const d of this.byJid.values()) {
      if (d.jid.startsWith(`${s}@`) || d.lid === s || d.lid.startsWith(`${s}@`) || d.phone === s) return d;
    }
    throw new SimError('unknown_device', `no device ${s}`, 404);
  }

  state() {
    const devices = {};
    for (const d of this.byJid.values()) {
      devices[d.jid] = {
        jid: d.jid, lid: d.lid, phone: d.phone, device: d.device, pushName: d.pushName,
        via: d.via, removed: d.removed, live: d.live.size, liveConnections: [...d.live.keys()],
        maxConcurrent: d.maxConcurrent, logins: d.logins, conflicts: d.conflicts, preKeys: Devices.preKeyCount(d),
        // What the device uploaded (Bundle): its registration id, identity and unused one-time keys.
        bundle: d.bundle && {
          registrationId: d.bundle.registrationId, identity: d.bundle.identity.toString('base64'),
          signedPreKeyId: d.bundle.signedPreKey.id, preKeysLeft: d.bundle.preKeys.size, preKeysHandedOut: d.bundle.handedOut
        },
        queue: d.queue.map(e => ({ tag: e.tag, id: e.id, sends: e.sends, ageMs: Date.now() - e.queuedAt })), stats: d.stats,
        pairedAt: d.pairedAt, lastLoginAt: d.lastLoginAt
      };
    }
    return devices;
  }

  maxConcurrent() {
    let m = 0;
    for (const d of this.byJid.values()) m = Math.max(m, d.maxConcurrent);
    return m;
  }
}
