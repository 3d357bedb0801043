// Cluster mode's write-through (state-sync.mjs over auth-state.mjs): a Baileys-facing write resolves only after the
// daemon's state_ack, the keys of one keys.set share few events, every item is the file's bytes, creds.json leaves at
// once, ok:false and stdin EOF fail the waiting writes.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Curve } from '@whiskeysockets/baileys';
import { useAtomicMultiFileAuthState } from '../src/auth-state.mjs';
import { makeStateSync } from '../src/state-sync.mjs';

const dirs = [];
const tmp = async () => { const d = await mkdtemp(join(tmpdir(), 'bsup-sync-')); dirs.push(d); return d; };
after(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));
const settle = (p) => Promise.race([p.then(() => 'resolved', () => 'rejected'),
  new Promise((r) => setTimeout(() => r('pending'), 200))]);
// Bounded waits for something that must happen (300 fsynced files take seconds on a loaded machine): never a fixed
// sleep for a positive condition.
async function until(cond, what, ms = 30000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
const itemsOf = (events) => Object.assign({}, ...events.map((e) => e.items));

async function open() {
  const dir = await tmp();
  const events = [];
  const sync = makeStateSync((e) => events.push(e));
  const auth = await useAtomicMultiFileAuthState(dir, { sync });
  return { dir, events, sync, auth };
}

test('keys.set resolves only after state_ack; 300 keys in few events carrying the files\' bytes', async () => {
  const { dir, events, sync, auth } = await open();
  const keys = {};
  for (let i = 1; i <= 300; i++) keys[i] = Curve.generateKeyPair();
  const p = auth.state.keys.set({ 'pre-key': keys, session: { gone: null } });
  // every local write is durable before the daemon hears of it; nothing resolves without an answer. No ack yet: the
  // first event is in flight, every later write waits in the next batch (the remove of a file that never existed
  // sends nothing)
  const sent = () => Object.keys(itemsOf(events)).length;
  await until(() => events.length >= 1 && sent() + sync.queued >= 300, '300 local writes');
  assert.equal(await settle(p), 'pending');
  for (const e of [...events]) sync.ack(e.ref, true); // the batch that waited leaves with the last ack
  await until(() => sent() >= 300, '300 items');
  const items = itemsOf(events);
  assert.equal(Object.keys(items).length, 300);
  assert.ok(events.length >= 1 && events.length <= 40, `${events.length} events for 300 keys`);
  for (const name of ['pre-key-1.json', 'pre-key-300.json']) {
    assert.deepEqual(Buffer.from(items[name], 'base64'), await readFile(join(dir, name)));
  }
  for (const e of events.slice(0, -1)) sync.ack(e.ref, true); // (already acked: a second ack is ignored)
  assert.equal(await settle(p), 'pending'); // one batch still unanswered
  sync.ack(events.at(-1).ref, true);
  assert.equal(await settle(p), 'resolved');
  // a remove of an existing file goes as null
  const before = events.length;
  const r = auth.state.keys.set({ 'pre-key': { 1: null } });
  await until(() => events.length > before, 'the remove event');
  assert.deepEqual(events.at(-1).items, { 'pre-key-1.json': null });
  sync.ack(events.at(-1).ref, true);
  await r;
});

// Loop turns, not time: the old batching sent every turn's pushes at the next setImmediate.
const turns = async (n) => { for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r)); };

test('while an event is unacked, pushes of later turns share the next event, sent at the ack; a lone push waits for nothing', async () => {
  const events = [];
  const sync = makeStateSync((e) => events.push(e), { maxBatchBytes: 300 });
  const a = sync.push('a.json', '1');
  assert.equal(events.length, 0);
  await turns(1);
  assert.deepEqual(events.map((e) => e.items), [{ 'a.json': 'MQ==' }]); // alone: left after this turn
  const b = sync.push('b.json', '2');
  await turns(3);
  const c = sync.push('c.json', '3');
  const b2 = sync.push('b.json', '4'); // the newer write of b replaces the older one in the waiting batch
  await turns(3);
  assert.equal(events.length, 1); // b and c wait for a's ack
  assert.equal(sync.queued, 2);
  sync.ack(events[0].ref, true);
  assert.equal(await settle(a), 'resolved');
  assert.deepEqual(events.map((e) => e.items)[1], { 'b.json': 'NA==', 'c.json': 'Mw==' }); // in finishing order
  assert.equal(await settle(b), 'pending');
  sync.ack(events[1].ref, true);
  assert.deepEqual([await settle(b), await settle(c), await settle(b2)], ['resolved', 'resolved', 'resolved']);
  // idle again: the next lone push leaves after its turn, without an ack
  sync.push('d.json', '5');
  await turns(1);
  assert.equal(events.length, 3);
  // maxBatchBytes: a full batch leaves even while another is in flight; `now` (creds.json) too, after what waited
  sync.push('e.json', 'x'.repeat(150));
  sync.push('f.json', 'y'.repeat(150)); // does not fit with e: e leaves at once
  assert.deepEqual(Object.keys(events.at(-1).items), ['e.json']);
  sync.push('creds.json', '{}', { now: true });
  assert.deepEqual(Object.keys(events.at(-1).items), ['f.json', 'creds.json']);
  assert.equal(events.length, 5);
  assert.equal(sync.queued, 0);
});

test('creds.json is sent at once after its synchronous write; saveCreds waits for the ack, flush too', async () => {
  const { dir, events, sync, auth } = await open();
  auth.state.creds.me = { id: '1@s.whatsapp.net' };
  const p = auth.saveCreds();
  assert.equal(events.length, 1); // no batching delay: sent in the same turn
  assert.deepEqual(Buffer.from(events[0].items['creds.json'], 'base64'), await readFile(join(dir, 'creds.json')));
  const f = auth.flush();
  assert.equal(await settle(p), 'pending');
  assert.equal(await settle(f), 'pending');
  sync.ack(events[0].ref, true);
  assert.equal(await settle(p), 'resolved');
  assert.equal(await settle(f), 'resolved');
});

test('ok:false fails the write (onWriteError); abort (stdin EOF) fails what waits and every later write', async () => {
  const dir = await tmp();
  const events = [];
  const errors = [];
  const sync = makeStateSync((e) => events.push(e));
  const auth = await useAtomicMultiFileAuthState(dir, { sync, onWriteError: (err, file) => errors.push(file) });
  const p = auth.state.keys.set({ 'pre-key': { 1: Curve.generateKeyPair() } });
  await until(() => events.length >= 1, 'the first event');
  sync.ack(events[0].ref, false);
  assert.equal(await settle(p), 'rejected');
  assert.deepEqual(errors, ['pre-key-1.json']);
  const q = auth.state.keys.set({ 'pre-key': { 2: Curve.generateKeyPair() } });
  await until(() => events.length >= 2, 'the second event');
  sync.abort('stdin EOF');
  assert.equal(await settle(q), 'rejected');
  assert.equal(await settle(auth.flush()), 'resolved'); // the exit is not held up
  await assert.rejects(sync.push('x.json', '{}'));
});
