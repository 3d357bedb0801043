// Who is on WhatsApp, with which devices and LIDs, and their keys: the answers to Baileys'
// usync queries (`iq xmlns=usync`: devices, lid and contact protocols) and to its pre-key bundle
// fetch (`iq xmlns=encrypt type=get <key>`). A party is a simulated contact (one device, 0) or
// an account the simulated phones linked (its phone, device 0, and its companions that uploaded
// keys). A number that is neither has no WhatsApp: zero devices, no LID, contact type "out".
import { B } from './baileys.mjs';

const { getBinaryNodeChild, getBinaryNodeChildren, jidDecode } = B;
const S_WA = 's.whatsapp.net';

export class Directory {
  constructor(sim) {
    this.sim = sim;
  }

  /** A jid (PN or LID, with or without device) -> { contact } | { account } | null. */
  party(jid) {
    const d = jidDecode(jid);
    if (!d?.user) return null;
    const byLid = d.server === 'lid';
    const contact = this.sim.contacts.find(d.user, byLid);
    if (contact) return { contact, device: d.device ?? 0 };
    for (const account of this.sim.pairing.accounts.values()) {
      if ((byLid ? account.lidUser : account.phone) === d.user) return { account, device: d.device ?? 0 };
    }
    return null;
  }

  /** The linked companion devices of an account that are still valid. */
  devicesOf(account) {
    return [...this.sim.devices.values()].filter(d => d.phone === account.phone && !d.removed);
  }

  /** <device-list> of an account: the phone, then companions with keys (with their key-index). */
  deviceListOf(account) {
    return [{ tag: 'device', attrs: { id: '0' } }, ...this.devicesOf(account).filter(d => d.bundle)
      .map(d => ({ tag: 'device', attrs: { id: String(d.device), 'key-index': String(d.keyIndex) } }))];
  }

  /** <iq xmlns=usync type=get>: one <user> per queried user, for the protocols asked. */
  usync(conn, node) {
    const usync = getBinaryNodeChild(node, 'usync');
    const protocols = (getBinaryNodeChild(usync, 'query')?.content ?? []).map(q => q.tag);
    const users = getBinaryNodeChildren(getBinaryNodeChild(usync, 'list'), 'user');
    this.sim.counters.usyncQueries++;
    const out = users.map((u) => {
      // A number lookup (onWhatsApp) sends <user><contact>+PHONE</contact></user>, no jid.
      const phone = String(getBinaryNodeChild(u, 'contact')?.content ?? ''); // decodes as a string
      const jid = u.attrs.jid ?? `${phone.replace(/\D/g, '')}@${S_WA}`;
      const p = this.party(jid);
      const lid = p?.contact?.lid ?? (p?.account ? `${p.account.lidUser}@lid` : undefined);
      const content = [];
      for (const proto of protocols) {
        if (proto === 'devices') {
          const list = p?.contact ? [{ tag: 'device', attrs: { id: '0' } }]
            : p?.account ? this.deviceListOf(p.account)
            : [];
          content.push({ tag: 'devices', attrs: {}, content: [{ tag: 'device-list', attrs: {}, content: list }] });
        } else if (proto === 'lid') {
          content.push({ tag: 'lid', attrs: lid ? { val: lid } : {} });
        } else if (proto === 'contact') {
          content.push({ tag: 'contact', attrs: { type: p ? 'in' : 'out' } });
        }
      }
      this.sim.event('usync_user', { conn: conn.id, jid, found: Boolean(p), protocols });
      return { tag: 'user', attrs: { jid }, content };
    });
    return [{ tag: 'usync', attrs: { sid: usync.attrs.sid ?? '', mode: usync.attrs.mode ?? 'query', context: usync.attrs.context ?? '' },
      content: [{ tag: 'list', attrs: {}, content: out }] }];
  }

  /** The Bundle behind a device jid, or null. */
  bundleOf(jid) {
    const p = this.party(jid);
    if (p?.contact) return p.device === 0 ? p.contact.bundle : null;
    if (!p?.account) return null;
    if (p.device === 0) return p.account.device0.bundle;
    return this.devicesOf(p.account).find(d => d.device === p.device)?.bundle ?? null;
  }

  /** <iq xmlns=encrypt type=get><key><user jid/>…: one pre-key bundle per device. */
  keys(conn, node) {
    const users = getBinaryNodeChildren(getBinaryNodeChild(node, 'key'), 'user');
    const out = [];
    for (const { attrs: { jid } } of users) {
      const bundle = this.bundleOf(jid);
      this.sim.counters.keyFetches++;
      this.sim.event('keys_fetched', { conn: conn.id, jid, found: Boolean(bundle) });
      // One <error> child makes Baileys drop the whole answer (assertNodeErrorFree).
      out.push(bundle ? bundle.userNode(jid) : { tag: 'user', attrs: { jid }, content: [{ tag: 'error', attrs: { code: '404', text: 'item-not-found' } }] });
    }
    return [{ tag: 'list', attrs: {}, content: out }];
  }
}
