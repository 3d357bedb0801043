// Pre-key files staged while the QR is shown (auth-state.mjs makeStager): a later write of the same bytes renames
// the staged, fsynced file into place (same inode) instead of creating a new one; anything else is written as before.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { useMultiFileAuthState, BufferJSON, Curve } from '@whiskeysockets/baileys';
import { useAtomicMultiFileAuthState } from '../src/auth-state.mjs';

const tmp = () => mkdtemp(join(tmpdir(), 'bsup-staged-'));
const staged = async (dir) => (await readdir(dir)).filter((n) => n.startsWith('.pre-key-staged.tmp-')).sort();
const text = (v) => JSON.stringify(v, BufferJSON.replacer);

test('a staged pair is renamed into place by the pre-key write of it; others are written as before; drop cleans up', async () => {
  const dir = await tmp();
  try {
    const auth = await useAtomicMultiFileAuthState(dir, { stagePreKeys: true });
    const [p0, p1, p2, other] = [Curve.generateKeyPair(), Curve.generateKeyPair(), Curve.generateKeyPair(), Curve.generateKeyPair()];
    await Promise.all([p0, p1, p2].map((p) => auth.stagePreKey(p)));
    const names = await staged(dir);
    assert.equal(names.length, 3);
    assert.equal(auth.stagedPreKeys, 3);
    const inodes = new Map();
    for (const n of names) inodes.set(await readFile(join(dir, n), 'utf8'), (await stat(join(dir, n))).ino);
    await auth.state.keys.set({ 'pre-key': { 1: p0, 2: p1, 7: other } });
    // the same inode: the staged file itself became pre-key-1.json, not a copy
    assert.equal((await stat(join(dir, 'pre-key-1.json'))).ino, inodes.get(text(p0)));
    assert.equal((await stat(join(dir, 'pre-key-2.json'))).ino, inodes.get(text(p1)));
    assert.equal(await readFile(join(dir, 'pre-key-7.json'), 'utf8'), text(other));
    assert.equal((await stat(join(dir, 'pre-key-1.json'))).mode & 0o777, 0o600);
    assert.deepEqual((await staged(dir)).length, 1); // p2's, not used
    // stock Baileys reads the files back as the values written
    const { state } = await useMultiFileAuthState(dir);
    const got = await state.keys.get('pre-key', ['1', '2', '7']);
    for (const [id, p] of [['1', p0], ['2', p1], ['7', other]]) assert.equal(text(got[id]), text(p));
    // a second write of the same bytes is an ordinary one (each staged file is used once)
    await auth.state.keys.set({ 'pre-key': { 3: p0 } });
    assert.equal(await readFile(join(dir, 'pre-key-3.json'), 'utf8'), text(p0));
    await auth.dropStaged();
    assert.deepEqual(await staged(dir), []);
    await auth.stagePreKey(p2); // after drop: nothing staged
    assert.deepEqual(await staged(dir), []);
    await auth.flush();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('stopStaging: no new staged file, the finished ones are still used; a reopened store deletes leftovers', async () => {
  const dir = await tmp();
  try {
    const auth = await useAtomicMultiFileAuthState(dir, { stagePreKeys: true });
    const [a, b] = [Curve.generateKeyPair(), Curve.generateKeyPair()];
    await auth.stagePreKey(a);
    auth.stopStaging();
    await auth.stagePreKey(b);
    assert.equal((await staged(dir)).length, 1);
    const ino = (await stat(join(dir, (await staged(dir))[0]))).ino;
    await auth.state.keys.set({ 'pre-key': { 5: a, 6: b } });
    assert.equal((await stat(join(dir, 'pre-key-5.json'))).ino, ino);
    assert.equal(await readFile(join(dir, 'pre-key-6.json'), 'utf8'), text(b));
    await auth.stagePreKey(Curve.generateKeyPair()); // still stopped
    assert.deepEqual(await staged(dir), []);
    // a killed worker's staged files are deleted when the next one opens the directory
    const again = await useAtomicMultiFileAuthState(dir, { stagePreKeys: true });
    await again.stagePreKey(Curve.generateKeyPair());
    assert.equal((await staged(dir)).length, 1);
    await useAtomicMultiFileAuthState(dir);
    assert.deepEqual(await staged(dir), []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('cluster mode: an adopted write still goes to the store with its bytes and waits for the commit', async () => {
  const dir = await tmp();
  try {
    const pushed = [];
    let commit;
    const committed = new Promise((r) => { commit = r; });
    const sync = { push: (name, t) => { pushed.push([name, t]); return committed; } };
    const auth = await useAtomicMultiFileAuthState(dir, { stagePreKeys: true, sync });
    const p = Curve.generateKeyPair();
    await auth.stagePreKey(p);
    const ino = (await stat(join(dir, (await staged(dir))[0]))).ino;
    let done = false;
    const w = auth.state.keys.set({ 'pre-key': { 9: p } }).then(() => { done = true; });
    while (!pushed.length) await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(pushed, [['pre-key-9.json', text(p)]]);
    assert.equal((await stat(join(dir, 'pre-key-9.json'))).ino, ino); // durable locally, renamed
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(done, false); // not before the daemon's commit
    commit();
    await w;
    assert.equal(done, true);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('staging off (BSUP_PREKEY_STAGE=off): stagePreKey writes nothing', async () => {
  const dir = await tmp();
  try {
    const auth = await useAtomicMultiFileAuthState(dir, { stagePreKeys: false });
    await auth.stagePreKey(Curve.generateKeyPair());
    assert.deepEqual(await staged(dir), []);
    assert.equal(auth.stagedPreKeys, 0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
