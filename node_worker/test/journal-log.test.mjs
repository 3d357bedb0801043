// The journal's append-only log (src/journal-log.mjs) and what journal.mjs builds on it, on real files and real
// processes: a torn tail is cut off, compaction bounds the segment, the per-file layout of earlier workers is
// migrated, a SIGKILL between the durable append and the ack leaves the message to be re-emitted, and a decrypt's
// ratchet commit becomes visible only after its journal record (commitGate).
// The Baileys repository and key store are stand-ins here (logic under test: the journal's storage); the real ones
// run in journal.test.mjs and the e2e kill tests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, mkdirSync, readdirSync, readFileSync, appendFileSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openLog, encodeRecord, decodeRecords } from '../src/journal-log.mjs';
import { openJournal, hashOf, TOMBSTONE_MS } from '../src/journal.mjs';
import { makeAuthFiles, commitGate } from '../src/auth-files.mjs';
import { useAtomicMultiFileAuthState } from '../src/auth-state.mjs';
import { addTransactionCapability } from '@whiskeysockets/baileys';
import pino from 'pino';

const dirs = [];
const tmp = () => { const d = mkdtempSync(join(tmpdir(), 'journal-log-')); dirs.push(d); return d; };
process.on('exit', () => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });
const segments = (dir) => readdirSync(dir).filter((n) => /^seg-\d+\.log$/.test(n)).sort();
const entry = (i, extra = {}) => ({ hash: `h${i}`, ref: `r${i}`, msgKey: `k${i}`, seq: i, at: 1000 + i,
  envelope: { attrs: { id: `ID${i}`, from: 'x@s.whatsapp.net' }, enc: { type: 'msg' } }, pt: 'AQ==', ...extra });
const tomb = (i) => ({ hash: `h${i}`, ref: `r${i}`, msgKey: `k${i}`, at: 1000 + i, acked: Date.now() });

// A stand-in repository: "decrypts" to the ciphertext itself; the key store's transaction just runs the work.
const fakeRepo = { decryptMessage: async ({ ciphertext }) => Buffer.from(ciphertext) };
const fakeKeys = { transaction: (work) => work() };
const stanza = (id, text) => ({ tag: 'message', attrs: { id, from: '111@s.whatsapp.net', t: '1' },
  content: [{ tag: 'enc', attrs: { type: 'msg', v: '2' }, content: Buffer.from(text) }] });
async function decryptThrough(j, id, text) {
  j.noteStanza(stanza(id, text));
  return j.wrapRepository(fakeRepo, fakeKeys).decryptMessage({ type: 'msg', ciphertext: Buffer.from(text), jid: 'x' });
}

test('records round-trip; a torn or corrupt tail is ignored and cut off before the next append', async () => {
  const dir = tmp();
  const log = await openLog(dir);
  for (let i = 1; i <= 3; i++) await log.append(entry(i), true);
  await log.close();
  const [seg] = segments(dir);
  assert.equal(statSync(join(dir, seg)).mode & 0o777, 0o600);
  const intact = statSync(join(dir, seg)).size;

  const half = encodeRecord(entry(4));
  appendFileSync(join(dir, seg), half.subarray(0, half.length >> 1)); // a power cut during an append
  const log2 = await openLog(dir);
  assert.deepEqual([...log2.live.keys()], ['h1', 'h2', 'h3']);
  assert.equal(statSync(join(dir, seg)).size, intact); // cut off
  await log2.append(entry(5), true);
  await log2.close();
  const log3 = await openLog(dir);
  assert.deepEqual([...log3.live.keys()], ['h1', 'h2', 'h3', 'h5']); // h5 readable: it does not follow garbage
  await log3.close();

  // A whole line whose checksum does not match (a torn sector inside the last record): ignored too.
  const bad = encodeRecord(entry(6));
  bad[bad.length - 5] ^= 1;
  appendFileSync(join(dir, seg), bad);
  const log4 = await openLog(dir);
  assert.equal(log4.live.has('h6'), false);
  assert.equal(decodeRecords(readFileSync(join(dir, seg))).records.length, 4);
  await log4.close();
});

test('a tombstone is final whatever the order it is read in', () => {
  const buf = Buffer.concat([encodeRecord(tomb(1)), encodeRecord(entry(1))]);
  assert.equal(decodeRecords(buf).records.length, 2);
  return (async () => {
    const dir = tmp();
    writeFileSync(join(dir, 'seg-000000000001.log'), buf, { mode: 0o600 });
    const log = await openLog(dir);
    assert.ok(log.live.get('h1').acked);
    await log.close();
  })();
});

test('compaction keeps the segment near its live data; live records and tombstones survive it', async () => {
  const dir = tmp();
  const log = await openLog(dir, { compactMinBytes: 4096 });
  for (let i = 0; i < 200; i++) {
    await log.append(entry(i, { pt: 'x'.repeat(300) }), true);
    await log.append(tomb(i));
    if (i >= 2) log.forget(`h${i - 2}`); // the journal's tombstone cap, as it prunes
  }
  await log.append(entry(1000), true); // unacked: must survive every compaction
  await log.flush();
  assert.ok(log.segmentBytes < 4096 * 2, `segment ${log.segmentBytes} bytes`); // 200 x ~600 bytes appended
  assert.deepEqual(segments(dir), [log.segment]);
  await log.close();
  const again = await openLog(dir);
  // Forgotten records appended since the last compaction are read again (the journal prunes them again at open).
  assert.ok(again.live.size < 20, `${again.live.size} records`);
  assert.ok(again.live.get('h199').acked);
  assert.equal(again.live.get('h1000').acked, undefined);
  for (const h of again.live.keys()) if (!['h1000', 'h198', 'h199'].includes(h)) again.forget(h);
  await again.compactNow();
  await again.close();
  const third = await openLog(dir);
  assert.deepEqual([...third.live.keys()].sort(), ['h1000', 'h198', 'h199']);
  assert.deepEqual(segments(dir), [third.segment]);
  await third.close();
});

test('migration: entries of the per-file layout are re-emitted, moved into the log, their files deleted', async () => {
  const authDir = tmp();
  const dir = join(authDir, 'journal');
  mkdirSync(dir, { recursive: true });
  const files = makeAuthFiles(dir, {}); // the writer the previous journal used
  await files.write(entry(1), 'h1.json');
  await files.write(tomb(2), 'h2.json');
  await files.write(entry(3), 'h3.json');

  const j = await openJournal(authDir);
  assert.deepEqual(j.pending().map((p) => p.ref), ['r1', 'r3']);
  assert.deepEqual(readdirSync(dir).filter((n) => n.endsWith('.json')), []);
  await j.ack(['r1']);
  await j.close();
  // The next worker reads the log alone: r3 is still unacked, r1 and r2 are tombstones.
  const j2 = await openJournal(authDir);
  assert.deepEqual(j2.pending().map((p) => p.ref), ['r3']);
  assert.equal(j2.size, 3);
  await j2.close();
});

const CHILD = `
import { openJournal } from ${JSON.stringify(new URL('../src/journal.mjs', import.meta.url).href)};
const [authDir, mode] = process.argv.slice(1);
const j = await openJournal(authDir);
const stanza = { tag: 'message', attrs: { id: 'WAID1', from: '111@s.whatsapp.net', t: '1' },
  content: [{ tag: 'enc', attrs: { type: 'msg', v: '2' }, content: Buffer.from('hello') }] };
j.noteStanza(stanza);
await j.wrapRepository({ decryptMessage: async ({ ciphertext }) => Buffer.from(ciphertext) }, { transaction: (w) => w() })
  .decryptMessage({ type: 'msg', ciphertext: Buffer.from('hello'), jid: 'x' });
if (mode === 'ack') await j.ack(j.pending().map((p) => p.ref));
process.kill(process.pid, 'SIGKILL');
`;

test('SIGKILL after the durable append, before the ack: re-emitted at the next open; after the ack: answered as acked', async () => {
  const run = (authDir, mode) => spawnSync(process.execPath, ['--input-type=module', '-e', CHILD, authDir, mode],
    { encoding: 'utf8', timeout: 60000 });
  const a = tmp();
  const r1 = run(a, 'noack');
  assert.equal(r1.signal, 'SIGKILL', r1.stderr);
  const j = await openJournal(a);
  const pending = j.pending();
  assert.equal(pending.length, 1);
  assert.equal(pending[0].entries[0].envelope.attrs.id, 'WAID1');
  assert.equal(Buffer.from(pending[0].entries[0].pt, 'base64').toString(), 'hello');
  // The server redelivers the stanza: answered from the journal (the plaintext), not decrypted again.
  assert.equal((await decryptThrough(j, 'WAID1', 'hello')).toString(), 'hello');
  await j.close();

  const b = tmp();
  const r2 = run(b, 'ack');
  assert.equal(r2.signal, 'SIGKILL', r2.stderr);
  const k = await openJournal(b);
  assert.deepEqual(k.pending(), []);
  assert.deepEqual([...(await decryptThrough(k, 'WAID1', 'hello'))], [1]); // acked: the empty plaintext
  assert.equal(k.size, 1);
  await k.close();
});

test('decrypts that overlap flushes: each is in the log when it returns (group commit loses none)', async () => {
  const authDir = tmp();
  const j = await openJournal(authDir);
  const dir = join(authDir, 'journal');
  const onDisk = () => new Set(decodeRecords(readFileSync(join(dir, segments(dir)[0]))).records.map((r) => r.hash));
  // Staggered: later decrypts append while earlier flushes are writing or syncing.
  const slow = { decryptMessage: async ({ ciphertext }) => {
    await new Promise((r) => setTimeout(r, ciphertext[ciphertext.length - 1] % 7));
    return Buffer.from(ciphertext);
  } };
  const missing = [];
  await Promise.all(Array.from({ length: 40 }, async (_, i) => {
    const text = `text ${i}`;
    j.noteStanza(stanza(`ID${i}`, text));
    await j.wrapRepository(slow, fakeKeys).decryptMessage({ type: 'msg', ciphertext: Buffer.from(text), jid: 'x' });
    if (!onDisk().has(hashOf('msg', Buffer.from(text)))) missing.push(i); // read at once, before anything else runs
  }));
  assert.deepEqual(missing, []);
  assert.equal(onDisk().size, 40);
  await j.close();
});

test('auth files: a write or remove inside commitGate waits for the gate before its rename/unlink', async () => {
  const dir = tmp();
  const files = makeAuthFiles(dir, {});
  await files.write({ v: 0 }, 'session-a.json');
  await files.write({ v: 0 }, 'pre-key-1.json');
  let open_;
  const gate = new Promise((r) => { open_ = r; });
  const [w, rm] = commitGate.run({ gate }, () => [files.write({ v: 1 }, 'session-a.json'), files.remove('pre-key-1.json')]);
  // The temp file is written (and fsynced) while the gate is shut; the old file and the pre-key stay as they were.
  const started = Date.now();
  while (!readdirSync(dir).some((n) => n.startsWith('.session-a.json.tmp-'))) {
    assert.ok(Date.now() - started < 30000, 'temp file never written');
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.deepEqual(JSON.parse(readFileSync(join(dir, 'session-a.json'), 'utf8')), { v: 0 });
  assert.ok(readdirSync(dir).includes('pre-key-1.json'));
  open_();
  await Promise.all([w, rm]);
  assert.deepEqual(JSON.parse(readFileSync(join(dir, 'session-a.json'), 'utf8')), { v: 1 });
  assert.deepEqual(readdirSync(dir).sort(), ['session-a.json']);
});

test('a decrypt commits its ratchet (session write) only once its journal record is in the log', async () => {
  const authDir = tmp();
  const dir = join(authDir, 'journal');
  const j = await openJournal(authDir);
  const { state } = await useAtomicMultiFileAuthState(authDir);
  const seen = [];
  // The real key store under Baileys' real transaction layer; set() is where the commit lands.
  const store = { ...state.keys, set: async (data) => {
    const gate = commitGate.getStore()?.gate;
    const p = state.keys.set(data);
    seen.push({ gate: !!gate, logged: null });
    await gate;
    const hashes = decodeRecords(readFileSync(join(dir, segments(dir)[0]))).records.map((r) => r.hash);
    seen.at(-1).logged = hashes.includes(hashOf('msg', Buffer.from('ratchet')));
    await p;
  } };
  const keys = addTransactionCapability(store, pino({ level: 'silent' }), { maxCommitRetries: 1, delayBetweenTriesMs: 1 });
  const inner = { decryptMessage: async ({ ciphertext }) => {
    await keys.set({ session: { 'x.0': { ratchet: 1 } } }); // in the transaction: a mutation, committed at its end
    return Buffer.from(ciphertext);
  } };
  j.noteStanza(stanza('R1', 'ratchet'));
  const pt = await j.wrapRepository(inner, keys).decryptMessage({ type: 'msg', ciphertext: Buffer.from('ratchet'), jid: 'x' });
  assert.equal(pt.toString(), 'ratchet');
  assert.deepEqual(seen, [{ gate: true, logged: true }]);
  assert.deepEqual(JSON.parse(readFileSync(join(authDir, 'session-x.0.json'), 'utf8')), { ratchet: 1 });
  await j.close();
});

test('tombstones past TOMBSTONE_MS are dropped at open and leave the log at its next compaction', async () => {
  const authDir = tmp();
  const dir = join(authDir, 'journal');
  mkdirSync(dir, { recursive: true });
  const log = await openLog(dir);
  const old = Date.now() - TOMBSTONE_MS - 60000;
  for (let i = 0; i < 10; i++) await log.append({ ...tomb(i), acked: old });
  await log.append(tomb(10));
  await log.append(entry(11), true);
  await log.close();
  const j = await openJournal(authDir, { compactMinBytes: 1 }); // every flush compacts
  assert.equal(j.size, 2);
  await j.ack(['r11']); // a flush: compaction writes the live records only
  await j.close();
  const hashes = segments(dir).flatMap((n) => decodeRecords(readFileSync(join(dir, n))).records.map((r) => r.hash));
  assert.deepEqual(hashes.sort(), ['h10', 'h11']);
});
