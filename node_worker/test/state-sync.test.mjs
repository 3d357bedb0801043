// Cluster mode's write-through (state-sync.mjs over auth-state.mjs): a Baileys-facing write resolves only after the
// daemon's state_ack, the keys of one keys.set share few events, every item is the file's bytes, creds.json leaves at
// once, ok:false and stdin EOF fail the waiting writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Curve } from '@whiskeysockets/baileys';
import { useAtomicMultiFileAuthState } from '../src/auth-state.mjs';
import { makeStateSync } from '../src/state-sync.mjs';

const tmp = () => mkdtemp(join(tmpdir(), 'bsup-sync-'));
const settle = (p) => Promise.race([p.then(() => 'resolved', () => 'rejected'),
  new Promise((r) => setTimeout(() => r('pending'), 200))]);

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
  // every local write is durable before the daemon hears of it; nothing resolves without an answer
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await settle(p), 'pending');
  const items = Object.assign({}, ...events.map((e) => e.items));
  assert.equal(Object.keys(items).length, 300); // the remove of a file that never existed sends nothing
  assert.ok(events.length >= 1 && events.length <= 40, `${events.length} events for 300 keys`);
  for (const name of ['pre-key-1.json', 'pre-key-300.json']) {
    assert.deepEqual(Buffer.from(items[name], 'base64'), await readFile(join(dir, name)));
  }
  for (const e of events.slice(0, -1)) sync.ack(e.ref, true);
  assert.equal(await settle(p), 'pending'); // one batch still unanswered
  sync.ack(events.at(-1).ref, true);
  assert.equal(await settle(p), 'resolved');
  // a remove of an existing file goes as null
  const r = auth.state.keys.set({ 'pre-key': { 1: null } });
  await new Promise((res) => setTimeout(res, 100));
  assert.deepEqual(events.at(-1).items, { 'pre-key-1.json': null });
  sync.ack(events.at(-1).ref, true);
  await r;
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
  await new Promise((r) => setTimeout(r, 100));
  sync.ack(events[0].ref, false);
  assert.equal(await settle(p), 'rejected');
  assert.deepEqual(errors, ['pre-key-1.json']);
  const q = auth.state.keys.set({ 'pre-key': { 2: Curve.generateKeyPair() } });
  await new Promise((r) => setTimeout(r, 100));
  sync.abort('stdin EOF');
  assert.equal(await settle(q), 'rejected');
  assert.equal(await settle(auth.flush()), 'resolved'); // the exit is not held up
  await assert.rejects(sync.push('x.json', '{}'));
});
