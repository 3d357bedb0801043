// Cluster mode's journal and sent store in the daemon's store (journal.mjs `sync`, send.mjs; docs/cluster.md "The
// decrypt journal and the sent store"): the real journal and sender with a stand-in state-sync whose commits the
// test resolves, and a stand-in signal repository (the real Baileys path is covered by journal.test.mjs and the
// cluster e2e test tests/cluster/test_journal_store.py).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtempSync, mkdirSync, readdirSync, rmSync, writeFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as baileys from '@whiskeysockets/baileys';
import { openJournal, hashOf, storeKey } from '../src/journal.mjs';
import { makeSender } from '../src/send.mjs';

const dirs = [];
const tmp = () => { const d = mkdtempSync(join(tmpdir(), 'jstore-')); dirs.push(d); return d; };
process.on('exit', () => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

/** A state-sync stand-in: every push is recorded with its own commit the test resolves or rejects. */
function fakeSync() {
  const pushes = [];
  const sync = {
    pushes,
    released: 0,
    release() { sync.released += 1; },
    push(name, text, opts = {}) {
      let resolve;
      let reject;
      const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
      pushes.push({ name, text, resolve, reject, defer: Boolean(opts.defer) });
      return promise;
    },
  };
  return sync;
}

const repo = { decryptMessage: async ({ ciphertext }) => Buffer.concat([Buffer.from('pt:'), ciphertext]) };
const keys = { transaction: (fn) => fn() };
const stanza = (id, ct) => ({ tag: 'message', attrs: { id, from: '15550001@s.whatsapp.net', t: '1' },
  content: [{ tag: 'enc', attrs: { type: 'msg', v: '2' }, content: ct }] });
const tick = () => new Promise((r) => setImmediate(r));

test('a decrypt returns only after its entry is committed to the store, as the legacy per-file JSON', { timeout: 20000 }, async () => {
  const sync = fakeSync();
  const j = await openJournal(tmp(), { sync });
  const wrapped = j.wrapRepository(repo, keys);
  const ct = Buffer.from('c1');
  j.noteStanza(stanza('M1', ct));
  let done = false;
  const p = wrapped.decryptMessage({ type: 'msg', ciphertext: ct, jid: 'x' }).then((pt) => { done = true; return pt; });
  for (let i = 0; i < 20; i++) await tick();
  assert.equal(done, false, 'returned before the store commit');
  assert.equal(sync.pushes.length, 1);
  const [push] = sync.pushes;
  const hash = hashOf('msg', ct);
  assert.equal(push.name, storeKey(hash));
  assert.equal(push.name, `journal/${hash}.json`);
  const entry = JSON.parse(push.text);
  assert.equal(entry.hash, hash);
  assert.equal(entry.envelope.attrs.id, 'M1');
  assert.equal(Buffer.from(entry.pt, 'base64').toString(), 'pt:c1');
  assert.ok(!entry.acked);
  assert.equal(push.defer, true); // leaves with the ratchet's write (state-sync)
  assert.equal(sync.released, 1); // the transaction wrote nothing here: released after it
  push.resolve();
  assert.equal((await p).toString(), 'pt:c1');
  await j.close();
});

test('an ack deletes the row without waiting for the commit; a failed commit is fatal and never returns', { timeout: 20000 }, async () => {
  const sync = fakeSync();
  const errors = [];
  const j = await openJournal(tmp(), { sync, onWriteError: (e) => errors.push(e) });
  const wrapped = j.wrapRepository(repo, keys);
  const ct = Buffer.from('c2');
  j.noteStanza(stanza('M2', ct));
  const p = wrapped.decryptMessage({ type: 'msg', ciphertext: ct, jid: 'x' });
  while (!sync.pushes.length) await tick();
  sync.pushes[0].resolve();
  await p;
  const { ref } = j.refFor({ key: { id: 'M2' } });
  await j.ack([ref]); // resolves although the delete's commit never does
  assert.equal(sync.pushes.length, 2);
  assert.deepEqual([sync.pushes[1].name, sync.pushes[1].text], [storeKey(hashOf('msg', ct)), null]);
  assert.equal(sync.pushes[1].defer, true); // rides with the next decrypt's transaction...
  const released = sync.released;
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(sync.released, released + 1); // ...or leaves within DELETE_DELAY_MS
  assert.equal(j.unacked, 0);

  const ct3 = Buffer.from('c3');
  j.noteStanza(stanza('M3', ct3));
  let returned = false;
  wrapped.decryptMessage({ type: 'msg', ciphertext: ct3, jid: 'x' }).then(() => { returned = true; });
  while (sync.pushes.length < 3) await tick();
  sync.pushes[2].reject(Object.assign(new Error('not committed'), { code: 'state_not_committed' }));
  for (let i = 0; i < 20; i++) await tick();
  assert.equal(errors.length, 1);
  assert.equal(returned, false, 'a decrypt whose entry is not in the store must not return (no receipt)');
  await j.close();
});

test('materialized rows are re-emitted; a row this log has acked is deleted again; nothing else is pushed', { timeout: 20000 }, async () => {
  // node a: journal two messages, ack one
  const syncA = fakeSync();
  const authA = tmp();
  const a = await openJournal(authA, { sync: syncA });
  const wrapped = a.wrapRepository(repo, keys);
  for (const [id, c] of [['K1', 'k1'], ['K2', 'k2']]) {
    j1Note(a, id, c);
    const p = wrapped.decryptMessage({ type: 'msg', ciphertext: Buffer.from(c), jid: 'x' });
    while (!syncA.pushes.some((x) => x.text && JSON.parse(x.text).envelope.attrs.id === id)) await tick();
    syncA.pushes.at(-1).resolve();
    await p;
  }
  const rows = Object.fromEntries(syncA.pushes.map((x) => [x.name, x.text]));
  const k1 = a.refFor({ key: { id: 'K1' } }).ref;
  await a.ack([k1]);
  await a.flush();
  await a.close();

  // node b: an empty auth dir plus the rows as the daemon materializes them (journal/<hash>.json)
  const authB = tmp();
  mkdirSync(join(authB, 'journal'), { mode: 0o700 });
  for (const [name, text] of Object.entries(rows)) writeFileSync(join(authB, name), text);
  const syncB = fakeSync();
  const b = await openJournal(authB, { sync: syncB });
  const pending = b.pending();
  assert.deepEqual(pending.map((x) => x.entries[0].envelope.attrs.id).sort(), ['K1', 'K2']);
  assert.equal(syncB.pushes.length, 0, 'migrating store rows writes nothing back');
  assert.deepEqual(readdirSync(join(authB, 'journal')).filter((n) => n.endsWith('.json')), []); // migrated into the log
  await b.close();

  // node a again, with the rows written into its dir as well (K1's delete was lost): its log says acked -> delete
  for (const [name, text] of Object.entries(rows)) writeFileSync(join(authA, name), text);
  const syncA2 = fakeSync();
  const a2 = await openJournal(authA, { sync: syncA2 });
  assert.deepEqual(a2.pending().map((x) => x.entries[0].envelope.attrs.id), ['K2']);
  assert.deepEqual(syncA2.pushes.map((x) => [x.name, x.text]), [[storeKey(hashOf('msg', Buffer.from('k1'))), null]]);
  await a2.close();
});

function j1Note(j, id, c) { j.noteStanza(stanza(id, Buffer.from(c))); }

test('without sync the journal pushes nothing (single host: unchanged)', { timeout: 20000 }, async () => {
  const j = await openJournal(tmp());
  const wrapped = j.wrapRepository(repo, keys);
  j1Note(j, 'S1', 's1');
  assert.equal((await wrapped.decryptMessage({ type: 'msg', ciphertext: Buffer.from('s1'), jid: 'x' })).toString(), 'pt:s1');
  await j.close();
});

function fakeWorker(dir, stateSync) {
  const sock = { ws: new EventEmitter(), ev: new EventEmitter() };
  sock.onWhatsApp = async (jid) => [{ jid, exists: true }];
  sock.sendMessage = async (jid, content, opts) => ({ key: { remoteJid: jid, fromMe: true, id: opts.messageId },
    message: { extendedTextMessage: { text: content.text } } });
  return { settings: { authDir: dir }, baileys, sock, stateSync, logger: { warn() {}, error() {} }, emit() {} };
}

test('sent store: each write goes to the store as sent/<waId>.json, the send does not wait for it; pruning deletes rows', { timeout: 20000 }, async () => {
  const dir = tmp();
  const sync = fakeSync();
  const s = makeSender(fakeWorker(dir, sync));
  await s.open();
  const res = await s.send({ waId: 'ABCDEF1', to: '15551000001@s.whatsapp.net', text: 'hi' }); // commit never resolves
  assert.equal(res.waMessageId, 'ABCDEF1');
  assert.equal(sync.pushes.length, 1);
  assert.equal(sync.pushes[0].name, 'sent/ABCDEF1.json');
  const row = JSON.parse(sync.pushes[0].text);
  assert.equal(row.to, '15551000001@s.whatsapp.net');
  // a rejected commit is logged, not fatal
  sync.pushes[0].reject(new Error('store away'));
  // the next process materialized an old row (mtime = its `at`, long ago): open prunes it, file and row
  const old = join(dir, 'sent', 'OLD1.json');
  writeFileSync(old, JSON.stringify({ to: 'x', at: 1000, message: null }));
  const { utimesSync } = await import('node:fs');
  utimesSync(old, 1, 1);
  assert.ok(statSync(old).mtimeMs < 10000);
  const sync2 = fakeSync();
  const s2 = makeSender(fakeWorker(dir, sync2));
  await s2.open();
  while (!sync2.pushes.length) await tick();
  assert.deepEqual(sync2.pushes.map((x) => [x.name, x.text]), [['sent/OLD1.json', null]]);
  assert.ok(await s2.getMessage({ id: 'ABCDEF1' }));
});

test('state-sync: a deferred push leaves with the next ordinary push (one event), or on release()', { timeout: 20000 }, async () => {
  const { makeStateSync } = await import('../src/state-sync.mjs');
  const events = [];
  const s = makeStateSync((e) => events.push(e));
  const j = s.push('journal/aa.json', '{"a":1}', { defer: true });
  for (let i = 0; i < 5; i++) await tick();
  assert.equal(events.length, 0, 'a deferred push was sent alone');
  const w = s.push('session-x.json', '{}');
  while (!events.length) await tick();
  assert.equal(events.length, 1);
  assert.deepEqual(Object.keys(events[0].items), ['journal/aa.json', 'session-x.json']); // one transaction
  s.ack(events[0].ref, true);
  await Promise.all([j, w]);
  const k = s.push('journal/bb.json', '{"b":1}', { defer: true });
  for (let i = 0; i < 5; i++) await tick();
  assert.equal(events.length, 1);
  s.release();
  while (events.length < 2) await tick();
  assert.deepEqual(Object.keys(events[1].items), ['journal/bb.json']);
  s.ack(events[1].ref, true);
  await k;
});
