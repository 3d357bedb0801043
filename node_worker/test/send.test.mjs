// send.mjs with a fake socket (the e2e tests in tests/e2e/test_messages_out.py use real Baileys): each status source
// on its own, forward-only statuses, the sent store answering getMessage across a "restart", the no-WhatsApp check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as baileys from '@whiskeysockets/baileys';
import { checkEvent } from '../src/protocol.mjs';
import { makeSender, receiptIds, receiptStatus } from '../src/send.mjs';

const dirs = [];
const tmp = () => { const d = mkdtempSync(join(tmpdir(), 'send-')); dirs.push(d); return d; };
process.on('exit', () => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

const TO = '15551000001@s.whatsapp.net';

function fakeWorker(dir, { onWhatsApp = true } = {}) {
  const events = [];
  const sock = { ws: new EventEmitter(), ev: new EventEmitter(), sent: [] };
  sock.onWhatsApp = async (jid) => [{ jid, exists: onWhatsApp }];
  sock.sendMessage = async (jid, content, opts) => {
    sock.sent.push({ jid, content, opts });
    return { key: { remoteJid: jid, fromMe: true, id: opts.messageId },
      message: { extendedTextMessage: { text: content.text } } };
  };
  const w = { settings: { authDir: dir }, baileys, sock, logger: { warn() {}, error() {} },
    emit: (e) => { assert.deepEqual(checkEvent(e), []); events.push(e); } };
  return { w, sock, events };
}

const statuses = (events) => events.map((e) => [e.waMessageId, e.status]);

test('receipt helpers', () => {
  assert.equal(receiptStatus(undefined), 'delivered');
  assert.equal(receiptStatus('read'), 'read');
  assert.equal(receiptStatus('played'), 'read');
  assert.equal(receiptStatus('retry'), null);
  assert.equal(receiptStatus('sender'), null);
  assert.deepEqual(receiptIds({ attrs: { id: 'A' }, content: [{ tag: 'list', content: [{ tag: 'item', attrs: { id: 'B' } }] }] }), ['A', 'B']);
});

test('each status source alone moves a sent message forward, never back; unknown ids are ignored', async () => {
  const dir = tmp();
  const { w, sock, events } = fakeWorker(dir);
  const s = makeSender(w);
  await s.open();
  s.listen(sock);
  for (const id of ['AA01', 'AA02', 'AA03', 'AA04']) {
    assert.deepEqual(await s.send({ to: TO, text: 'x', waId: id }), { waMessageId: id, status: 'sending' });
  }
  assert.equal(sock.sent[0].opts.messageId, 'AA01');
  assert.equal(sock.sent[0].content.linkPreview, null);
  sock.ws.emit('CB:ack,class:message', { attrs: { id: 'AA01' } });
  sock.ws.emit('CB:receipt', { attrs: { id: 'AA02', type: 'read' } });
  sock.ev.emit('messages.update', [{ key: { fromMe: true, id: 'AA03' }, update: { status: 3 } }]);
  sock.ev.emit('messages.upsert', { type: 'append', messages: [{ key: { fromMe: true, id: 'AA04' }, status: 4 }] });
  sock.ws.emit('CB:ack,class:message', { attrs: { id: 'AA02' } }); // behind read: dropped
  sock.ws.emit('CB:receipt', { attrs: { id: 'OTHER' } }); // not ours
  sock.ws.emit('CB:ack,class:message', { attrs: { id: 'AA05' } });
  assert.deepEqual(statuses(events), [['AA01', 'sent'], ['AA02', 'read'], ['AA03', 'delivered'], ['AA04', 'read']]);
  sock.ws.emit('CB:ack,class:message', { attrs: { id: 'AA01', error: '479' } });
  assert.equal(events.at(-1).status, 'failed');
  assert.match(events.at(-1).error, /479/);
  await s.flush();
});

test('getMessage answers from the sent store, also in the next process; a miss is undefined', async () => {
  const dir = tmp();
  const first = fakeWorker(dir);
  const s1 = makeSender(first.w);
  await s1.open();
  await s1.send({ to: TO, text: 'keep me', waId: 'BB01' });
  await s1.flush();
  assert.deepEqual(readdirSync(join(dir, 'sent')), ['BB01.json']);
  const next = fakeWorker(dir);
  const s2 = makeSender(next.w);
  await s2.open();
  s2.listen(next.sock);
  assert.equal((await s2.getMessage({ id: 'BB01' })).extendedTextMessage.text, 'keep me');
  assert.equal(await s2.getMessage({ id: 'NOPE' }), undefined);
  assert.equal(await s2.getMessage({ id: '../creds' }), undefined);
  next.sock.ws.emit('CB:receipt', { attrs: { id: 'BB01' } }); // sent by the earlier process: still reported
  assert.deepEqual(statuses(next.events), [['BB01', 'delivered']]);
});

test('a repeated send of the same id while the first runs puts one copy on the wire', async () => {
  const { w, sock } = fakeWorker(tmp());
  const s = makeSender(w);
  await s.open();
  const [a, b] = await Promise.all([s.send({ to: TO, text: 'x', waId: 'DD01' }), s.send({ to: TO, text: 'x', waId: 'DD01' })]);
  assert.deepEqual(a, b);
  assert.equal(sock.sent.length, 1);
  await s.send({ to: TO, text: 'x', waId: 'DD01' }); // a later one (e.g. after a reconnect) goes out again
  assert.equal(sock.sent.length, 2);
  await s.flush();
});

test('a number without WhatsApp: failed, nothing sent', async () => {
  const { w, sock } = fakeWorker(tmp(), { onWhatsApp: false });
  const s = makeSender(w);
  await s.open();
  assert.deepEqual(await s.send({ to: TO, text: 'x', waId: 'CC01' }),
    { waMessageId: 'CC01', status: 'failed', error: 'not_on_whatsapp' });
  assert.equal(sock.sent.length, 0);
});
