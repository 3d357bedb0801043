import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, writeFile, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { pathToFileURL, fileURLToPath } from 'node:url';
import { useMultiFileAuthState, initAuthCreds, BufferJSON, proto, Curve } from '@whiskeysockets/baileys';
import { useAtomicMultiFileAuthState, AuthCorruptError, fixFileName } from '../src/auth-state.mjs';

const SRC = pathToFileURL(fileURLToPath(new URL('../src/auth-state.mjs', import.meta.url))).href;
const tmp = () => mkdtemp(join(tmpdir(), 'bsup-auth-'));

// Key material shaped like what Baileys stores, including ids that need fixFileName ('/' and ':').
function sampleKeys() {
  return {
    'pre-key': { 1: Curve.generateKeyPair(), 2: Curve.generateKeyPair() },
    session: { '4915112345678.0': { _sessions: { x: { registrationId: 7, rootKey: Buffer.from('rk') } }, version: 'v1' },
      '123:4@lid': { a: Buffer.from([1, 2, 3]) } },
    'sender-key': { 'group@g.us::491511:2': { k: Buffer.alloc(32, 3) } },
    'app-state-sync-key': { 'AAAAAB/c:d': proto.Message.AppStateSyncKeyData.fromObject({ keyData: Buffer.alloc(32, 9), timestamp: 1700000000 }) },
    'lid-mapping': { '4915112345678': '123456@lid' },
  };
}
function sampleCreds() {
  const creds = initAuthCreds();
  creds.me = { id: '4915112345678:3@s.whatsapp.net', lid: '123456:3@lid', name: 'Tester' };
  creds.account = { details: Buffer.from('d'), accountSignatureKey: Buffer.alloc(32, 1), accountSignature: Buffer.alloc(64, 2), deviceSignature: Buffer.alloc(64, 3) };
  return creds;
}
async function readAll(state, keys) {
  const out = {};
  for (const [type, entries] of Object.entries(keys)) out[type] = await state.keys.get(type, Object.keys(entries));
  return out;
}
const norm = (x) => JSON.parse(JSON.stringify(x, BufferJSON.replacer));

test('a directory written by stock useMultiFileAuthState loads identically (and same bytes back)', async () => {
  const dir = await tmp();
  const stock = await useMultiFileAuthState(dir);
  Object.assign(stock.state.creds, sampleCreds());
  await stock.saveCreds();
  const keys = sampleKeys();
  await stock.state.keys.set(keys);
  const stockFiles = (await readdir(dir)).sort();
  assert.ok(stockFiles.includes('session-123-4@lid.json') && stockFiles.includes('app-state-sync-key-AAAAAB__c-d.json'));

  const ours = await useAtomicMultiFileAuthState(dir);
  assert.deepEqual(norm(ours.state.creds), norm(stock.state.creds));
  const viaOurs = await readAll(ours.state, keys);
  const viaStock = await readAll(stock.state, keys);
  assert.deepEqual(norm(viaOurs), norm(viaStock));
  assert.ok(viaOurs['app-state-sync-key']['AAAAAB/c:d'] instanceof proto.Message.AppStateSyncKeyData);

  // Writing the same data through ours produces the same file names with the same bytes.
  const dir2 = await tmp();
  const ours2 = await useAtomicMultiFileAuthState(dir2);
  Object.assign(ours2.state.creds, stock.state.creds);
  await ours2.saveCreds();
  await ours2.state.keys.set(keys);
  await ours2.flush();
  assert.deepEqual((await readdir(dir2)).sort(), stockFiles);
  for (const f of stockFiles) assert.equal(await readFile(join(dir2, f), 'utf8'), await readFile(join(dir, f), 'utf8'), f);
  await rm(dir, { recursive: true }); await rm(dir2, { recursive: true });
});

test('a directory written by our auth state loads identically through stock Baileys; removals work', async () => {
  const dir = await tmp();
  const ours = await useAtomicMultiFileAuthState(dir);
  Object.assign(ours.state.creds, sampleCreds());
  await ours.saveCreds();
  const keys = sampleKeys();
  await ours.state.keys.set(keys);
  await ours.state.keys.set({ 'pre-key': { 2: null } });
  await ours.flush();
  const stock = await useMultiFileAuthState(dir);
  assert.deepEqual(norm(stock.state.creds), norm(ours.state.creds));
  const got = await readAll(stock.state, keys);
  assert.equal(got['pre-key'][2], null);
  delete keys['pre-key'][2];
  assert.deepEqual(norm(await readAll(stock.state, keys)), norm(await readAll(ours.state, keys)));
  await rm(dir, { recursive: true });
});

test('corrupt or empty creds.json is refused, never silently replaced by fresh creds', async () => {
  for (const content of ['', '{"noiseKey":', 'garbage']) {
    const dir = await tmp();
    await writeFile(join(dir, 'creds.json'), content);
    await assert.rejects(useAtomicMultiFileAuthState(dir), (e) => e instanceof AuthCorruptError && e.code === 'auth_corrupt');
    assert.equal(await readFile(join(dir, 'creds.json'), 'utf8'), content, 'the evidence is left untouched');
    await rm(dir, { recursive: true });
  }
});

test('a corrupt key file is reported and read as missing; an empty dir gives fresh creds', async () => {
  const dir = await tmp();
  const reported = [];
  const ours = await useAtomicMultiFileAuthState(dir, { onCorruptKey: (f) => reported.push(f) });
  assert.equal(ours.state.creds.registered, false);
  await writeFile(join(dir, 'session-1.0.json'), '{"trunc');
  assert.deepEqual(await ours.state.keys.get('session', ['1.0', '2.0']), { '1.0': null, '2.0': null });
  assert.deepEqual(reported, ['session-1.0.json']);
  await rm(dir, { recursive: true });
});

test('writes to one file are serialised in call order, reads see earlier writes, flush waits', async () => {
  const dir = await tmp();
  const ours = await useAtomicMultiFileAuthState(dir);
  const writes = [];
  for (let i = 0; i < 50; i++) writes.push(ours.state.keys.set({ session: { a: { i } } }));
  const read = ours.state.keys.get('session', ['a']);
  await ours.flush();
  assert.equal(ours.pendingWrites, 0);
  assert.deepEqual((await read).a, { i: 49 });
  assert.deepEqual(JSON.parse(await readFile(join(dir, 'session-a.json'), 'utf8')), { i: 49 });
  await Promise.all(writes);
  assert.deepEqual((await readdir(dir)).filter((f) => f.includes('.tmp-')), []);
  await rm(dir, { recursive: true });
});

// The child writes as hard as it can: creds over and over, batches of big pre-keys, sessions being
// replaced and removed. The parent SIGKILLs it at a random moment. Whatever survives must parse, and
// the identity (noiseKey/signedIdentityKey, i.e. the link to the phone) must be the one first saved.
const CHILD = `
import { useAtomicMultiFileAuthState } from '${SRC}';
const s = await useAtomicMultiFileAuthState(process.argv[1]);
await s.saveCreds();
process.stdout.write('ready\\n');
let n = 0;
for (;;) {
  n++;
  s.state.creds.nextPreKeyId = n;
  s.state.creds.filler = 'x'.repeat(20000 + (n % 7) * 3000);
  s.saveCreds();
  const batch = {};
  for (let i = 0; i < 40; i++) batch[n * 40 + i] = { private: Buffer.alloc(32, n), public: Buffer.alloc(32, i), pad: 'p'.repeat(4000) };
  const sessions = {};
  for (let i = 0; i < 10; i++) sessions['491' + i + '.0'] = (n + i) % 3 ? { n, blob: Buffer.alloc(8000, n) } : null;
  await s.state.keys.set({ 'pre-key': batch, session: sessions });
}
`;

function runChild(dir) {
  return spawn(process.execPath, ['--input-type=module', '-e', CHILD, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
}

test('SIGKILL during heavy writes, many times: never an unparsable file, never new credentials', { timeout: 120000 }, async () => {
  const dir = await tmp();
  let identity = null;
  const KILLS = 25;
  for (let k = 0; k < KILLS; k++) {
    const child = runChild(dir);
    await new Promise((resolve, reject) => {
      child.stdout.once('data', resolve);
      child.once('exit', (c) => reject(new Error(`child exited early: ${c}`)));
    });
    await new Promise((r) => setTimeout(r, Math.random() * 150));
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;

    const files = await readdir(dir);
    for (const f of files) {
      if (f.includes('.tmp-')) continue; // half-written temp files are expected and ignored/cleaned
      const text = await readFile(join(dir, f), 'utf8');
      assert.doesNotThrow(() => JSON.parse(text, BufferJSON.reviver), `kill ${k}: ${f} is not valid JSON (${text.length} bytes)`);
    }
    const creds = JSON.parse(await readFile(join(dir, 'creds.json'), 'utf8'), BufferJSON.reviver);
    const id = Buffer.concat([creds.noiseKey.public, creds.signedIdentityKey.public]).toString('hex');
    identity ??= id;
    assert.equal(id, identity, `kill ${k}: credentials changed (would cost a re-scan)`);
  }
  // The next start cleans the temp files up and loads the same creds.
  const s = await useAtomicMultiFileAuthState(dir);
  assert.equal(Buffer.concat([s.state.creds.noiseKey.public, s.state.creds.signedIdentityKey.public]).toString('hex'), identity);
  assert.deepEqual((await readdir(dir)).filter((f) => f.includes('.tmp-')), []);
  await rm(dir, { recursive: true });
});

test('saveCredsNow: the new creds are in creds.json when it returns; a failed write is reported and thrown', async () => {
  const dir = await tmp();
  const errors = [];
  const ours = await useAtomicMultiFileAuthState(dir, { onWriteError: (err, file) => errors.push(file) });
  Object.assign(ours.state.creds, sampleCreds());
  ours.saveCredsNow(); // no await: synchronous
  const onDisk = JSON.parse(readFileSync(join(dir, 'creds.json'), 'utf8'), BufferJSON.reviver);
  assert.equal(onDisk.me.id, '4915112345678:3@s.whatsapp.net');
  assert.ok(Buffer.from(onDisk.account.accountSignature).equals(Buffer.alloc(64, 2)));
  assert.equal(ours.pendingWrites, 0);
  await rm(dir, { recursive: true });
  assert.throws(() => ours.saveCredsNow(), (e) => e.code === 'ENOENT');
  assert.deepEqual(errors, ['creds.json']);
});

test('fixFileName matches stock escaping', () => {
  assert.equal(fixFileName('session-1:2@lid/x.json'), 'session-1-2@lid__x.json');
});
