// A contact's retry receipts, as a WhatsApp client sends them when it cannot decrypt a message
// (PROTOCOL.md §5): <receipt type=retry> with <retry count id t v=1/>, its <registration> id and,
// when it has no session with the sender at all or from the second attempt on, a fresh one-time
// pre-key bundle in <keys> (Baileys' own sendRetryRequest does the same). Baileys answers from its
// sent store (getMessage): the same id again, re-encrypted on a session it builds from those keys
// (or from a bundle it fetches), so a lost or diverged session heals without losing the message.
import { B } from './baileys.mjs';

const { encodeBigEndian, KEY_BUNDLE_TYPE, getBinaryNodeChild, extractE2ESessionFromRetryReceipt } = B;
// libsignal's errors when the receiver has no session with the sender device at all (a pkmsg
// naming a one-time pre-key it no longer has cannot start one either).
const NO_SESSION = /^(No session record|No sessions|Invalid PreKey ID)$/;

/** The <receipt type=retry> a contact `c` sends for message `id`; `withKeys` adds a fresh bundle. */
export function retryReceiptNode(c, { from, id, t, count, withKeys }) {
  const content = [
    { tag: 'retry', attrs: { count: String(count), id, t, v: '1' } },
    { tag: 'registration', attrs: {}, content: encodeBigEndian(c.creds.registrationId, 4) }
  ];
  if (withKeys) {
    const keyNode = c.newPreKeys(1).userNode(c.jid).content;
    content.push({ tag: 'keys', attrs: {}, content: [
      { tag: 'type', attrs: {}, content: KEY_BUNDLE_TYPE },
      ...keyNode.filter(n => ['identity', 'key', 'skey'].includes(n.tag))
    ] });
  }
  return { tag: 'receipt', attrs: { from, id, t: String(Math.floor(Date.now() / 1000)), type: 'retry' }, content };
}

/**
 * Automatic retry receipts (config contactRetries: at most that many per message and sender
 * device; 0 = never, the contact only records the failure). A copy of a message the contact has
 * already decrypted is a duplicate, not a loss: no retry for it, as a real client drops it.
 */
export class AutoRetry {
  constructor(sim) {
    this.sim = sim;
    this.sent = new Map(); // `${contact}|${device}|${id}` -> retry receipts sent
  }

  /** After a contact's failed decrypt (`entry` in its inbox): queue a retry receipt if it may. */
  onFailure(c, dev, entry, msgT) {
    const limit = this.sim.config.contactRetries;
    const key = `${c.phone}|${dev.jid}|${entry.id}`;
    const count = (this.sent.get(key) ?? 0) + 1;
    if (count > limit) return 0;
    if (c.inbox.some(e => e.id === entry.id && e.from === dev.jid && !e.error)) return 0;
    this.sent.set(key, count);
    const withKeys = count > 1 || NO_SESSION.test(entry.error);
    // From the address the tenant used (`to`), like WhatsApp's: device 0, so Baileys resends to all.
    this.sim.mailbox.enqueue(dev, retryReceiptNode(c, { from: entry.to, id: entry.id, t: String(msgT ?? Math.floor(entry.t / 1000)), count, withKeys }));
    this.sim.counters.contactRetryReceipts++;
    this.sim.event('contact_retry_receipt', { contact: c.phone, id: entry.id, to: dev.jid, count, keys: withKeys, error: entry.error });
    entry.retried = count;
    return count;
  }
}

/**
 * The other direction, off by default (config contactResends: at most that many resends per
 * message and tenant device; 0 = a tenant's retry receipt is only recorded): the contact answers a
 * tenant's retry receipt for a text it sent, like a WhatsApp client: a fresh session, from the
 * receipt's <keys> or else the device's bundle on the server, and the same id again for that device.
 */
export async function resendOnRetry(sim, c, dev, node) {
  const id = node.attrs.id;
  const sent = c.sent.find(s => s.id === id);
  const asked = c.retriesIn.filter(r => r.id === id && r.from === dev.jid).length; // this one included
  if (!sent || asked > sim.config.contactResends) return false;
  const keys = extractE2ESessionFromRetryReceipt(node);
  await c.dropSession(dev.lid);
  const { type, ciphertext } = await c.encryptFor(dev.lid, { conversation: sent.text }, () => keys ?? dev.bundle.session());
  const count = getBinaryNodeChild(node, 'retry')?.attrs.count ?? '1';
  sim.mailbox.enqueue(dev, { tag: 'message', attrs: { ...sent.attrs, id, t: String(Math.floor(Date.now() / 1000)), type: 'text', notify: c.pushName },
    content: [{ tag: 'enc', attrs: { v: '2', type, count }, content: ciphertext }] });
  sim.counters.contactResends++;
  sim.event('contact_resent', { contact: c.phone, id, to: dev.jid, enc: type, count: Number(count), keys: Boolean(keys) });
  return true;
}
