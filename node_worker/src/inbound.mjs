// Incoming messages as protocol events (docs/protocol.md "Incoming"): one `message` event per message with its
// `ref`, the daemon's `ack`/`replay`, the re-emission of unacked journal entries, and `message_update` events.
// The journal itself (what is durable before the receipt) is journal.mjs.
import { encodeMessageEvent } from './protocol.mjs';
import { keyRef } from './journal.mjs';
import { toJsonSafe } from './jsonsafe.mjs';

// Test-only (tests/cluster/test_journal_store.py): journal and receipt as usual, but never tell the daemon, so the
// message exists only in the journal (and, in cluster mode, in the store) when the test kills the node.
const HOLD_MESSAGES = process.env.BSUP_TEST_HOLD_MESSAGES === '1';

function emitMessage(w, fields) {
  if (HOLD_MESSAGES) return;
  let message;
  try {
    message = toJsonSafe(fields.message);
  } catch (err) {
    w.emit({ type: 'error', code: 'message_encode_failed', message: String(err?.message ?? err), fatal: false });
    return;
  }
  const { line, error } = encodeMessageEvent({ ...fields, message });
  if (line) w.emitter.writeLine(line);
  else w.emit(error);
}

/** A journaled message rebuilt as Baileys would have upserted it: the stanza's attributes decoded like Baileys
 *  decodes them (decodeMessageNode, cleanMessage), the plaintext of each of its enc children merged in. */
function rebuild(w, entries) {
  const { decodeMessageNode, unpadRandomMax16, cleanMessage, proto } = w.baileys;
  const me = w.auth.state.creds.me ?? {};
  const attrs = entries[0].envelope.attrs;
  const { fullMessage } = decodeMessageNode({ tag: 'message', attrs, content: [] }, me.id, me.lid || '');
  for (const e of entries) {
    let msg = proto.Message.decode(unpadRandomMax16(Buffer.from(e.pt, 'base64')));
    msg = msg.deviceSentMessage?.message || msg;
    fullMessage.message = fullMessage.message ? Object.assign(fullMessage.message, msg) : msg;
  }
  cleanMessage(fullMessage, me.id, me.lid);
  return { message: fullMessage, upsertType: attrs.offline ? 'append' : 'notify' };
}

/** Every unacked journal entry, in journal order, as `message` events with `recovered: true` (at start and on
 *  `replay`). An entry without an envelope (cannot happen: the CB:message listener sees every stanza first) is
 *  reported, not guessed at. */
export function reemitPending(w) {
  if (!w.journal) return 0;
  let n = 0;
  for (const { ref, entries } of w.journal.pending()) {
    if (!entries[0].envelope?.attrs) {
      w.emit({ type: 'error', code: 'journal_entry_unusable', fatal: false, message: `journal entry ${ref} has no envelope` });
      continue;
    }
    try {
      emitMessage(w, { ...rebuild(w, entries), ref, recovered: true });
      n += 1;
    } catch (err) {
      w.emit({ type: 'error', code: 'journal_entry_unusable', fatal: false, message: `journal entry ${ref}: ${err?.message ?? err}` });
    }
  }
  return n;
}

/** messages.upsert -> one `message` event per message. Journaled messages carry their journal ref and are emitted
 *  once per process (a redelivered stanza's second upsert is dropped); others get a hash of their key. */
export function onMessagesUpsert(w) {
  return ({ messages, type }) => {
    for (const m of messages) {
      const { ref, emit } = w.journal ? w.journal.refFor(m) : { ref: keyRef(m?.key), emit: true };
      if (emit) emitMessage(w, { upsertType: type, message: m, ref, recovered: false });
    }
  };
}

/** messages.update (edits, revokes, status/receipt changes) -> one `message_update` event each. Not journaled:
 *  an edit or revoke also arrives as a journaled `message` (its protocolMessage); this is the decoded view. */
export function onMessagesUpdate(w) {
  return (updates) => {
    for (const { key, update } of updates) {
      try {
        w.emit({ type: 'message_update', key: toJsonSafe(key ?? {}), update: toJsonSafe(update ?? {}) });
      } catch (err) {
        w.emit({ type: 'error', code: 'message_encode_failed', message: String(err?.message ?? err), fatal: false });
      }
    }
  };
}
