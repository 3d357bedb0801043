// A logged-in companion session: the login checks, one session per device (conflict), and the
// stanzas a session sends: iqs (those Baileys waits on before `open`, usync, key fetches), its
// messages, receipts and acks (routed to contacts.mjs / mailbox.mjs).
import { Bundle } from './bundle.mjs';
import { Devices } from './devices.mjs';
const S_WA = 's.whatsapp.net';
const nowSec = () => String(Math.floor(Date.now() / 1000));

export class Session {
  constructor(sim) {
    this.sim = sim;
  }

  /** A ClientPayload without devicePairingData: saved creds log in (PROTOCOL.md §1 phase 4). */
  onLogin(conn, payload) {
    const { sim } = this;
    conn.kind = 'login';
    const jid = `${String(payload.username)}:${payload.device ?? 0}@s.whatsapp.net`;
    const dev = sim.devices.get(jid);
    let reason = null;
    if (!dev) reason = 'unknown_device';
    else if (dev.removed) reason = 'device_removed';
    else if (!conn.noise.clientNoisePub.equals(dev.noisePub)) reason = 'noise_key_mismatch';
    else if (conn.fault?.fault === 'login_failure') reason = 'fault';
    if (reason) {
      sim.counters.loginFailures++;
      const code = reason === 'fault' ? String(conn.fault.code ?? 401) : '401';
      sim.event('login_failed', { conn: conn.id, jid, reason, code });
      return sim.sendAndClose(conn, { tag: 'failure', attrs: { reason: code } });
    }
    conn.jid = jid;
    // WhatsApp keeps one session per device: the newcomer wins, the old one gets
    // <conflict type=replaced/> (Baileys: 440). Count the overlap so duplicates are visible.
    const concurrent = dev.live.size + 1;
    dev.maxConcurrent = Math.max(dev.maxConcurrent, concurrent);
    for (const old of dev.live.values()) {
      sim.counters.conflicts++;
      sim.counters.conflictsFromDuplicates++;
      dev.conflicts++;
      sim.event('conflict', { jid, replaced: old.id, by: conn.id });
      dev.live.delete(old.id);
      sim.sendAndClose(old, { tag: 'stream:error', attrs: {}, content: [{ tag: 'conflict', attrs: { type: 'replaced' } }] });
    }
    dev.live.set(conn.id, conn);
    dev.logins++;
    dev.lastLoginAt = Date.now();
    sim.counters.logins++;
    sim.event('login', { conn: conn.id, jid, concurrent });
    sim.send(conn, {
      tag: 'success',
      attrs: { t: nowSec(), lid: dev.lid, props: '1', abprops: '1', location: 'sim', creation: String(Math.floor(dev.pairedAt / 1000)) }
    });
  }

  /** A stanza on a transport-stage connection (registration or login). */
  onNode(conn, node) {
    const { sim } = this;
    const dev = conn.jid && sim.devices.get(conn.jid);
    if (node.tag === 'ack') {
      // An ack of a notification we sent may be awaited (link_code.mjs) under `ack:<id>`;
      // otherwise it acknowledges something from the device's mailbox.
      if (!sim.resolveWaiter(conn, `ack:${node.attrs.id}`, node) && dev) sim.mailbox.onAck(conn, dev, node);
      return;
    }
    if (node.tag === 'receipt') return dev && sim.mailbox.onReceipt(conn, dev, node);
    if (node.tag === 'message') {
      if (!dev) return;
      return sim.contacts.onTenantMessage(conn, dev, node).catch((err) => {
        sim.event('protocol_error', { conn: conn.id, error: `tenant message: ${err?.message ?? err}` });
      });
    }
    if (node.tag !== 'iq') return; // presence, ib (unified_session): no answer needed
    const { type, id, xmlns } = node.attrs;
    if (type === 'result' || type === 'error') return sim.resolveWaiter(conn, id, node);
    sim.counters.iqs++;
    const child = Array.isArray(node.content) ? node.content[0] : undefined;
    const result = (content) => sim.send(conn, { tag: 'iq', attrs: { from: S_WA, type: 'result', id }, ...(content ? { content } : {}) });
    switch (`${xmlns}/${type}/${child?.tag ?? ''}`) {
      case 'encrypt/get/count':
        return result([{ tag: 'count', attrs: { value: String(dev ? Devices.preKeyCount(dev) : 0) } }]);
      case 'encrypt/set/registration': {
        // Kept, not just counted: contacts fetch one-time pre-keys from it to encrypt to this device.
        const upload = Bundle.fromUpload(node);
        if (dev) {
          if (dev.bundle) dev.bundle.merge(upload); else dev.bundle = upload;
        }
        sim.counters.preKeyUploads++;
        sim.event('prekeys_uploaded', {
          conn: conn.id, jid: conn.jid, count: upload.preKeys.size,
          identityMatchesPairing: dev ? upload.identity.equals(dev.identityPub) : null
        });
        return result();
      }
      case 'encrypt/get/digest':
        // Baileys only checks a <digest> child exists; without it it re-uploads pre-keys.
        return result([{ tag: 'digest', attrs: {}, content: [{ tag: 'type', attrs: {}, content: Buffer.from([5]) }] }]);
      case 'passive/set/active':
        result();
        // The offline batch, then <ib><offline count=N>, which makes Baileys set
        // receivedPendingNotifications (PROTOCOL.md §1 phase 4, §6).
        return sim.mailbox.onActive(conn, dev);
      case 'encrypt/get/key':
        return result(sim.directory.keys(conn, node));
      case 'usync/get/usync':
        return result(sim.directory.usync(conn, node));
      case 'abt/get/props':
        return result([{ tag: 'props', attrs: { protocol: '1', hash: 'sim' }, content: [{ tag: 'prop', attrs: { name: 'sim', value: '1' } }] }]);
      case 'blocklist/get/':
      case 'blocklist/get/list':
        return result([{ tag: 'list', attrs: {} }]);
      case 'privacy/get/privacy':
        return result([{ tag: 'privacy', attrs: {}, content: ['last', 'online', 'profile', 'status', 'readreceipts', 'groupadd']
          .map(name => ({ tag: 'category', attrs: { name, value: 'all' } })) }]);
      case 'md/set/link_code_companion_reg':
        return sim.linkCodes.onIq(conn, node);
      case 'w:p/get/ping':
        sim.counters.pings++;
        return result();
      default:
        // Anything else gets an empty result so no Baileys query waits for its 60 s timeout.
        return result();
    }
  }
}
