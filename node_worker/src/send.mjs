// Outgoing messages: the `send` command and `message_status` events (docs/protocol.md). The daemon's outbox
// (supervisor/outbox.py) decides what to send and when; this module sends one message, remembers what it sent (so a
// retry receipt can be answered after a restart) and reports each status the message reaches.
//
// Where a status comes from (Baileys 7.0.0-rc14, docs/protocol.md "Outgoing"):
//   - sent: the server's `<ack class=message id>`. Baileys ignores successful acks (messages-recv.js handleBadAck),
//     so we listen on the socket ourselves. An ack with `error` is a refusal: failed.
//   - delivered/read: the recipient's `<receipt>` (no type = delivery, read/read-self/played = read), read on the
//     socket too: Baileys' own `messages.update` sits in its event buffer (up to 20 s after a first login) and is
//     merged into our own buffered `messages.upsert` when the receipt comes within ~100 ms of the send.
//   - `messages.update` and our own `messages.upsert` (`status`) as well: whichever arrives first wins.
// Statuses only move forward; the daemon drops one that does not advance its row.
import { join } from 'node:path';
import { readdir, stat } from 'node:fs/promises';
import { existsSync, rmSync } from 'node:fs';
import { makeAuthFiles, prepareDir } from './auth-files.mjs';

/** Sent messages are kept this long for `getMessage` (retry receipts come within minutes; a phone that was off
 *  for days asks again when it comes back). Older entries are deleted at start. */
export const KEEP_MS = 7 * 24 * 3600 * 1000;
export const RANK = { sending: 1, sent: 2, delivered: 3, read: 4, failed: 5 };
// proto.WebMessageInfo.Status: 0 ERROR, 1 PENDING, 2 SERVER_ACK, 3 DELIVERY_ACK, 4 READ, 5 PLAYED.
const FROM_WA_STATUS = { 0: 'failed', 2: 'sent', 3: 'delivered', 4: 'read', 5: 'read' };
const PN_JID = /^\d+@s\.whatsapp\.net$/;

const consumeFile = (path) => {
  try { rmSync(path); return true; } catch { return false; }
};

/** A receipt's status for the sender, or null when it says nothing about delivery (retry, sender, inactive...). */
export function receiptStatus(type) {
  if (type === undefined || type === '' || type === 'delivery') return 'delivered';
  if (type === 'read' || type === 'read-self' || type === 'played') return 'read';
  return null;
}

/** The ids a `<receipt>` node is about: its own id and those of its `<list><item id>` children. */
export function receiptIds(node) {
  const ids = node?.attrs?.id ? [node.attrs.id] : [];
  const list = Array.isArray(node?.content) ? node.content.find((c) => c?.tag === 'list') : null;
  for (const item of Array.isArray(list?.content) ? list.content : []) {
    if (item?.tag === 'item' && item.attrs?.id) ids.push(item.attrs.id);
  }
  return ids;
}

/**
 * The sender: `send(cmd)` for the command handler, `getMessage(key)` for Baileys' socket config, `listen(sock)` to
 * wire the status sources. `emit` writes protocol events. The sent store is `<auth>/sent/<waId>.json` (the auth
 * directory's atomic writer: a torn file is impossible), opened by `open()` before the socket exists. Entries older
 * than KEEP_MS (file mtime; materialize sets it from the entry's `at`) are removed at open, with their store rows.
 */
export function makeSender(w, { now = Date.now } = {}) {
  const folder = join(w.settings.authDir, 'sent');
  let files = null;
  const known = new Map(); // waId -> the highest status emitted by this process (0 = none yet)
  const onWhatsApp = new Set(); // recipients seen to have WhatsApp (a number that has none is asked every time)

  const muted = new Set(); // test hook only: ids whose statuses this process must not report (it is about to die)
  const report = (waMessageId, status, error = null) => {
    if (!known.has(waMessageId) || !status || muted.has(waMessageId)) return;
    const prev = known.get(waMessageId);
    if (prev === RANK.failed || RANK[status] <= prev) return;
    known.set(waMessageId, RANK[status]);
    w.emit({ type: 'message_status', waMessageId, status, ...(error ? { error } : {}) });
  };

  const open = async () => {
    await prepareDir(folder);
    const onWriteError = (err, file) => w.logger.error({ err, file }, 'sent store write failed');
    // Cluster mode: each durable write/remove also goes to the daemon's store as `sent/<waId>.json` (materialized
    // into sent/ before every spawn, so a retry receipt reaching the next owner is answered). Not awaited: the
    // send's reply does not wait for a commit. A lost row (the node dies within that one transaction, or the store
    // errs) costs only the answer to a retry receipt after a takeover: the recipient's phone shows "waiting for
    // this message"; the message itself was sent. A fenced write still kills the worker (the daemon does that).
    const sync = w.stateSync;
    const onDurable = sync ? (name, text) => {
      sync.push(`sent/${name}`, text).catch((err) => w.logger.warn({ err: err?.code ?? String(err) }, 'sent store row not committed'));
    } : null;
    files = makeAuthFiles(folder, { onWriteError, onDurable });
    for (const name of await readdir(folder)) {
      if (!name.endsWith('.json')) continue;
      const id = name.slice(0, -5);
      const info = await stat(join(folder, name)).catch(() => null);
      if (info && now() - info.mtimeMs > KEEP_MS) files.remove(name);
      else known.set(id, 0); // statuses of messages an earlier process sent still arrive here
    }
  };

  /** Baileys' `getMessage`: the content we sent under this id, or undefined (never an empty message: the recipient
   *  would be stuck on "waiting for this message" instead of asking again). */
  const getMessage = async (key) => {
    if (!files || !key?.id || !/^[A-Za-z0-9]+$/.test(key.id)) return undefined;
    try {
      const entry = await files.read(`${key.id}.json`);
      if (!entry?.message) return undefined;
      return w.baileys.proto.Message.decode(entry.message);
    } catch (err) {
      w.logger.warn({ err, id: key.id }, 'sent store read failed');
      return undefined;
    }
  };

  const hasWhatsApp = async (jid) => {
    if (!PN_JID.test(jid) || onWhatsApp.has(jid)) return true; // a LID comes from WhatsApp itself
    const [found] = (await w.sock.onWhatsApp(jid)) ?? [];
    if (found?.exists) onWhatsApp.add(jid);
    return Boolean(found?.exists);
  };

  // A `send` the daemon repeats while the first is still running (its reply timed out) joins that one instead of
  // putting a second copy on the wire.
  const inflight = new Map();
  const send = (cmd) => {
    if (!inflight.has(cmd.waId)) {
      inflight.set(cmd.waId, sendOnce(cmd).finally(() => inflight.delete(cmd.waId)));
    }
    return inflight.get(cmd.waId);
  };

  const sendOnce = async (cmd) => {
    const waId = cmd.waId;
    if (!await hasWhatsApp(cmd.to)) {
      known.set(waId, RANK.failed);
      return { waMessageId: waId, status: 'failed', error: 'not_on_whatsapp' };
    }
    if (!known.has(waId)) known.set(waId, 0);
    // Test-only (tests/e2e/test_messages_out.py): die after the stanza left and before the reply, once per file,
    // and report nothing about it first (the server's ack may beat the kill): the daemon must resend it.
    const hook = process.env.BSUP_TEST_KILL_AFTER_SEND;
    const dying = Boolean(hook && existsSync(hook) && consumeFile(hook));
    if (dying) muted.add(waId);
    const quoted = cmd.replyTo ? {
      key: { remoteJid: cmd.to, fromMe: Boolean(cmd.replyTo.fromMe), id: String(cmd.replyTo.id),
        ...(cmd.replyTo.participant ? { participant: String(cmd.replyTo.participant) } : {}) },
      message: { conversation: typeof cmd.replyTo.text === 'string' ? cmd.replyTo.text : '' },
    } : undefined;
    // linkPreview: null -- Baileys would otherwise fetch every URL in the text from this host before sending.
    const msg = await w.sock.sendMessage(cmd.to, { text: cmd.text, linkPreview: null },
      { messageId: waId, ...(quoted ? { quoted } : {}) });
    const encoded = Buffer.from(w.baileys.proto.Message.encode(msg.message).finish());
    await files.write({ to: cmd.to, at: now(), message: encoded }, `${waId}.json`);
    if (dying) process.kill(process.pid, 'SIGKILL');
    const rank = known.get(waId);
    const status = Object.keys(RANK).find((s) => RANK[s] === rank) ?? 'sending';
    return { waMessageId: msg.key.id, status };
  };

  const listen = (sock) => {
    sock.ws.on('CB:ack,class:message', (node) => {
      const { id, error } = node?.attrs ?? {};
      if (id) report(id, error ? 'failed' : 'sent', error ? `server refused the message (ack error ${error})` : null);
    });
    sock.ws.on('CB:receipt', (node) => {
      const status = receiptStatus(node?.attrs?.type);
      if (status) for (const id of receiptIds(node)) report(id, status);
    });
    const fromBaileys = (key, waStatus) => {
      if (key?.fromMe && key.id) report(key.id, FROM_WA_STATUS[waStatus], waStatus === 0 ? 'send failed' : null);
    };
    sock.ev.on('messages.update', (updates) => {
      for (const u of updates ?? []) if (u?.update?.status !== undefined) fromBaileys(u.key, u.update.status);
    });
    sock.ev.on('messages.upsert', ({ messages }) => {
      for (const m of messages ?? []) if (m?.status !== undefined && m.status !== null) fromBaileys(m.key, m.status);
    });
  };

  return { open, send, getMessage, listen, flush: () => files?.flush() };
}
