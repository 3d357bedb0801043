// The simulated contacts and their conversations with tenants: a contact sends a text (encrypted
// for every linked device of the tenant's account, queued per device in the Mailbox), receives
// what a tenant sends (decrypts each <to> addressed to it into its inbox; the server acks the
// stanza), and answers with delivery / read / retry receipts.
import { randomBytes } from 'node:crypto';
import { B } from './baileys.mjs';
import { Contact, textOf } from './contact.mjs';
import { SimError } from './errors.mjs';
import { AutoRetry, resendOnRetry, retryReceiptNode } from './retry.mjs';

const { getBinaryNodeChild, getBinaryNodeChildren, jidDecode } = B;
const S_WA = 's.whatsapp.net';
const nowSec = () => String(Math.floor(Date.now() / 1000));
const newMessageId = () => `3EB0${randomBytes(9).toString('hex').toUpperCase()}`;

export class Contacts {
  constructor(sim) {
    this.sim = sim;
    this.byPhone = new Map();
    this.nextPhone = 15551000001;
    this.rejectNext = []; // error codes for the next tenant sends (POST /sends/reject)
    this.retry = new AutoRetry(sim); // a contact's retry receipts for what it cannot decrypt
  }

  /** The server refuses the next `count` tenant sends with <ack class=message error=CODE>. */
  rejectSends({ error = '479', count = 1 } = {}) {
    const code = String(error);
    if (!/^\d{3}$/.test(code)) throw new SimError('bad_request', 'error must be a 3-digit code, e.g. 463 or 479', 400);
    if (!Number.isInteger(count) || count < 1) throw new SimError('bad_request', 'count must be an integer >= 1', 400);
    for (let i = 0; i < count; i++) this.rejectNext.push(code);
    return [...this.rejectNext];
  }

  create({ phone, pushName } = {}) {
    const p = String(phone ?? this.nextPhone++).replace(/\D/g, '');
    if (!/^\d{6,15}$/.test(p)) throw new SimError('bad_request', 'phone must be 6-15 digits', 400);
    if (this.byPhone.has(p) || this.sim.pairing.accounts.has(p)) throw new SimError('exists', `${p} is already on WhatsApp here`, 409);
    const c = new Contact({ phone: p, pushName });
    this.byPhone.set(p, c);
    this.sim.event('contact_created', { phone: p, lid: c.lid });
    return c;
  }

  /** By PN user or LID user (jid user part). */
  find(user, byLid = false) {
    if (!byLid) return this.byPhone.get(String(user)) ?? null;
    for (const c of this.byPhone.values()) if (c.lidUser === String(user)) return c;
    return null;
  }

  /** A contact by phone number; with `phones`, an account's phone (device 0) too. */
  get(phone, { phones = false } = {}) {
    if (phone == null || phone === '') throw new SimError('bad_request', 'give the contact\'s phone number', 400);
    const p = String(phone).replace(/\D/g, '');
    const c = this.byPhone.get(p) ?? (phones ? this.sim.pairing.accounts.get(p)?.device0 : null);
    if (!c) throw new SimError('unknown_contact', `no contact ${phone} (POST /contacts first)`, 404);
    return c;
  }

  /** The tenant's account by device jid, LID or phone, and its devices that can receive (have keys). */
  recipients(to) {
    const dev = this.sim.devices.find({ jid: to });
    const devices = this.sim.directory.devicesOf({ phone: dev.phone }).filter(d => d.bundle);
    if (!devices.length) throw new SimError('no_keys', `${dev.phone} has no device with uploaded pre-keys`, 409);
    return devices;
  }

  /**
   * The contact sends a text to a tenant: one stanza per linked device, each encrypted for it
   * (pkmsg while no session exists, then msg), queued in that device's mailbox.
   * addressing "pn" (default): from=PHONE@s.whatsapp.net; "lid": from=LID@lid with sender_pn.
   * corrupt: the last byte (a msg's MAC) flipped after encrypting, so the tenant cannot decrypt this
   * copy (Bad MAC) while the contact's session has moved on: its retry receipt and a resend follow.
   */
  async send({ from, to, text, id, addressing = 'pn', corrupt = false } = {}) {
    const c = this.get(from);
    if (typeof text !== 'string' || !text) throw new SimError('bad_request', 'text must be a non-empty string', 400);
    if (addressing !== 'pn' && addressing !== 'lid') throw new SimError('bad_request', 'addressing must be pn or lid', 400);
    if (typeof corrupt !== 'boolean') throw new SimError('bad_request', 'corrupt must be true or false', 400);
    const devices = this.recipients(to);
    const msgId = String(id ?? newMessageId());
    const attrs = addressing === 'lid'
      ? { from: c.lid, sender_pn: c.jid, addressing_mode: 'lid' }
      : { from: c.jid };
    const out = [];
    for (const dev of devices) {
      const { type, ciphertext } = await c.encryptFor(dev.lid, { conversation: text }, () => dev.bundle.session());
      if (corrupt) ciphertext[ciphertext.length - 1] ^= 0xff;
      const node = {
        tag: 'message', attrs: { ...attrs, id: msgId, t: nowSec(), type: 'text', notify: c.pushName },
        content: [{ tag: 'enc', attrs: { v: '2', type }, content: ciphertext }]
      };
      const entry = this.sim.mailbox.enqueue(dev, node);
      out.push({ jid: dev.jid, type, sentNow: entry.sends > 0 });
    }
    c.sent.push({ id: msgId, to, text, attrs, devices: out.map(o => o.jid) });
    this.sim.counters.contactMessages++;
    this.sim.event('contact_sent', { from: c.phone, id: msgId, devices: out });
    return { ok: true, id: msgId, from: c.jid, devices: out };
  }

  /**
   * A <message> from a tenant device. Each <to jid> is handled as WhatsApp would deliver it: a
   * contact decrypts it into its inbox; the account's own phone (device 0) decrypts its copy (a
   * deviceSentMessage) into the phone's inbox; the account's other companions get it queued
   * (from=SENDER_DEVICE recipient=TO), like any stanza. A retry resend has its <enc> directly in the
   * message, for `to`. The server then acks the stanza (<ack class=message>): all Baileys waits for.
   */
  async onTenantMessage(conn, dev, node) {
    const { id, to } = node.attrs;
    const reject = this.rejectNext.shift();
    if (reject) {
      // Refused by the server: nobody gets it; Baileys turns the error ack into status ERROR.
      this.sim.counters.sendsRejected++;
      this.sim.event('tenant_message_rejected', { conn: conn.id, jid: dev.jid, id, to, error: reject });
      return this.sim.send(conn, { tag: 'ack', attrs: { class: 'message', id, from: to, t: nowSec(), error: reject } });
    }
    const participants = getBinaryNodeChildren(getBinaryNodeChild(node, 'participants'), 'to');
    const direct = getBinaryNodeChildren(node, 'enc');
    const targets = participants.map(p => ({ jid: p.attrs.jid, enc: getBinaryNodeChild(p, 'enc') }))
      .concat(direct.map(enc => ({ jid: to, enc })));
    const delivered = [];
    const copies = [];
    const failed = []; // [contact, entry]: a retry receipt is considered after the server's ack
    const relayed = [];
    const dest = this.sim.directory.party(to);
    let reached = 0; // targets that are a device of the addressee
    for (const { jid, enc } of targets) {
      const p = enc && this.sim.directory.party(jid);
      if (p && dest && (p.contact ?? p.account) === (dest.contact ?? dest.account)) reached++;
      if (p?.account && p.device !== 0) {
        const other = this.sim.directory.devicesOf(p.account).find(d => d.device === p.device);
        if (other && other !== dev) relayed.push(this.relay(dev, other, node, enc).jid);
        continue;
      }
      const peer = p?.contact ?? p?.account?.device0;
      if (!peer) continue;
      const entry = { id, to, via: jid, from: dev.jid, type: enc.attrs.type, retryCount: Number(enc.attrs.count ?? 0), t: Date.now() };
      try {
        const sent = await peer.decryptFrom(dev.lid, enc.attrs.type, Buffer.from(enc.content));
        const msg = sent.deviceSentMessage?.message ?? sent;
        if (sent.deviceSentMessage) entry.destination = sent.deviceSentMessage.destinationJid;
        entry.text = textOf(msg);
        entry.message = msg.toJSON?.() ?? msg;
      } catch (err) {
        entry.error = String(err?.message ?? err);
        if (p.contact) failed.push([peer, entry]);
      }
      peer.inbox.push(entry);
      (p.contact ? delivered : copies).push({ contact: peer.phone, type: entry.type, ok: !entry.error });
    }
    // A number without WhatsApp: Baileys still sends (copies to its own devices at most) and resolves.
    if (!reached) this.sim.counters.sendsToNobody++;
    this.sim.counters.tenantMessages++;
    this.sim.event('tenant_message', { conn: conn.id, jid: dev.jid, id, to, participants: targets.map(t => t.jid), reached, delivered, copies, relayed });
    this.sim.send(conn, { tag: 'ack', attrs: { class: 'message', id, from: to, t: nowSec() } });
    for (const [peer, entry] of failed) this.retry.onFailure(peer, dev, entry, node.attrs.t);
  }

  /**
   * Queue a tenant's <enc> for another linked device: a companion of another account gets it from
   * the sending device; one of the sender's own account gets its copy, with recipient=TO.
   */
  relay(sender, other, node, enc) {
    const user = jidDecode(node.attrs.to)?.user;
    const toSelf = user === sender.phone || user === this.sim.pairing.accounts.get(sender.phone)?.lidUser;
    const copy = other.phone === sender.phone && !toSelf;
    this.sim.mailbox.enqueue(other, {
      tag: 'message',
      attrs: { from: sender.jid, ...(copy ? { recipient: node.attrs.to } : {}), id: node.attrs.id, t: nowSec(), type: node.attrs.type ?? 'text' },
      content: [{ tag: 'enc', attrs: { v: '2', type: enc.attrs.type }, content: enc.content }]
    });
    return other;
  }

  /** The contact answers a message it received: delivery, read, or retry (it could not decrypt). */
  async receipt({ contact, id, type = 'delivery' } = {}) {
    const c = this.get(contact);
    if (!['delivery', 'read', 'retry'].includes(type)) throw new SimError('bad_request', 'type must be delivery, read or retry', 400);
    const got = [...c.inbox].reverse().find(e => e.id === id);
    if (!got) throw new SimError('unknown_message', `${c.phone} received no message ${id}`, 404);
    const dev = this.sim.devices.get(got.from);
    if (!dev) throw new SimError('unknown_device', `the sender device ${got.from} is gone`, 404);
    // The receipt comes from the address the tenant used (`to`), like WhatsApp's.
    let node = { tag: 'receipt', attrs: { from: got.to, id, t: nowSec(), ...(type === 'delivery' ? {} : { type }) } };
    if (type === 'retry') {
      // Asked for on demand: the receiver lost the session; it forgets it and sends fresh keys.
      await c.dropSession(dev.lid);
      node = retryReceiptNode(c, { from: got.to, id, t: nowSec(), count: 1, withKeys: true });
    }
    this.sim.mailbox.enqueue(dev, node);
    this.sim.event('contact_receipt', { contact: c.phone, id, receiptType: type, to: dev.jid });
    return { ok: true, contact: c.phone, id, type, device: dev.jid };
  }

  /**
   * The contact loses its Signal sessions with the devices of a tenant's account (a reinstalled or
   * restored phone): the tenant's next message on the old session fails to decrypt (retry.mjs).
   */
  async forget({ contact, to } = {}) {
    const c = this.get(contact);
    if (!to) throw new SimError('bad_request', 'give to: the tenant\'s jid', 400);
    const devices = this.recipients(to);
    for (const d of devices) await c.dropSession(d.lid);
    this.sim.event('contact_forgot_sessions', { contact: c.phone, devices: devices.map(d => d.jid) });
    return { ok: true, contact: c.phone, devices: devices.map(d => d.jid) };
  }

  /** The server passes a tenant's receipt (delivery, inactive, read, ...) on to the contact. */
  onTenantReceipt(dev, to, ids, type) {
    const d = jidDecode(to ?? '');
    const c = d && this.find(d.user, d.server === 'lid');
    if (!c) return;
    for (const id of ids) c.receiptsIn.push({ id, from: dev.jid, type, t: Date.now() });
  }

  /** A tenant could not decrypt a contact's message and asks for it again: recorded; resent with contactResends. */
  onTenantRetry(conn, dev, node) {
    const c = this.find(jidDecode(node.attrs.to)?.user, node.attrs.to?.endsWith('@lid'));
    c?.retriesIn.push({ id: node.attrs.id, from: dev.jid, t: Date.now() });
    this.sim.counters.tenantRetryReceipts++;
    this.sim.event('tenant_retry_receipt', { conn: conn.id, jid: dev.jid, id: node.attrs.id, to: node.attrs.to });
    this.sim.send(conn, { tag: 'ack', attrs: { class: 'receipt', id: node.attrs.id, from: node.attrs.to ?? S_WA, type: 'retry' } });
    if (c) resendOnRetry(this.sim, c, dev, node).catch(err => this.sim.event('contact_resend_failed', { id: node.attrs.id, error: String(err?.message ?? err) }));
  }

  inbox(contact) {
    const c = this.get(contact, { phones: true });
    return { ok: true, ...c.state(), messages: c.inbox, receiptsIn: c.receiptsIn, retriesIn: c.retriesIn };
  }

  state() {
    return [...this.byPhone.values()].map(c => c.state());
  }
}
