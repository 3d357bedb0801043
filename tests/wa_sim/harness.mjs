// Shared by smoke.mjs and test/*.test.mjs: start the simulator as a real child process and drive
// real Baileys clients against it. Importing this module applies, in THIS process, the two
// test-only patches a worker would get: trust the test root, and a Curve.verify that verifies.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import './strict-verify.mjs';
import './trust-test-root.mjs';
import { B } from './baileys.mjs';

// Baileys arms long one-shot timers it never clears (e.g. the 30 s pre-key upload timeout raced
// against the upload). They keep a finished test process alive for up to 30 s. Unref long timers
// created in this process: timing is unchanged, they just no longer block exit.
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = function (fn, ms, ...args) {
  const t = realSetTimeout(fn, ms, ...args);
  if (ms >= 15000) t.unref?.();
  return t;
};

const pino = createRequire(new URL('../../node_worker/package.json', import.meta.url))('pino');
const MAIN = new URL('./main.mjs', import.meta.url).pathname;

/** Start `node main.mjs` on port 0; resolves once its ready line is read. */
export async function startSim(args = []) {
  const proc = spawn(process.execPath, [MAIN, '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const ready = await new Promise((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout });
    rl.once('line', (l) => resolve(JSON.parse(l)));
    proc.once('exit', (code) => reject(new Error(`simulator exited ${code} before ready`)));
  });
  const control = async (method, p, body) => {
    const res = await fetch(`${ready.controlUrl}${p}`, {
      method, headers: { 'content-type': 'application/json' }, body: body ? JSON.stringify(body) : undefined
    });
    return { status: res.status, ...(await res.json()) };
  };
  return {
    ...ready, proc, control,
    state: () => control('GET', '/state'),
    scan: (qr, extra = {}) => control('POST', '/scan', { qr, ...extra }),
    events: async (since = 0) => (await control('GET', `/events?since=${since}`)).events,
    newContact: (extra = {}) => control('POST', '/contacts', extra),
    contactSend: (from, to, text, extra = {}) => control('POST', '/contacts/send', { from, to, text, ...extra }),
    inbox: (contact) => control('GET', `/contacts/inbox?contact=${encodeURIComponent(contact)}`),
    contactReceipt: (contact, id, type) => control('POST', '/contacts/receipt', { contact, id, type }),
    enterCode: (phone, code, extra = {}) => control('POST', '/enter-code', { phone, code, ...extra }),
    kill: (jid, variant) => control('POST', '/kill', { jid, variant }),
    fault: (fault, extra = {}) => control('POST', '/faults', { fault, ...extra }),
    configure: (cfg) => control('POST', '/config', cfg),
    stop: () => new Promise((r) => { if (proc.exitCode !== null) return r(); proc.once('exit', r); proc.kill('SIGTERM'); })
  };
}

/**
 * Client options for message tests: the simulator never sends a history sync, and without this
 * Baileys holds messages.upsert for 20 s after a first login (PROTOCOL.md §3.7).
 */
export const MESSAGING_CLIENT = { shouldSyncHistoryMessage: () => false };

// Removed when the test process exits (the suite ran ~700 runs' worth of them into /tmp otherwise). Synchronous:
// 'exit' handlers cannot wait.
const authDirs = [];
process.on('exit', () => {
  for (const d of authDirs) { try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ } }
});
export const tmpAuthDir = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'wa-sim-auth-'));
  authDirs.push(d);
  return d;
};

/**
 * One Baileys socket (what one worker connection does): useMultiFileAuthState in authDir,
 * creds writes chained and awaitable (PROTOCOL.md §3.4), connection.update recorded with timestamps.
 */
export async function openClient({ wsUrl, authDir, ...opts }) {
  const { state, saveCreds } = await B.useMultiFileAuthState(authDir);
  const rec = new EventEmitter();
  rec.t0 = Date.now();
  rec.qrs = [];
  rec.updates = [];
  rec.closed = null;
  rec.opened = null;
  let saving = Promise.resolve();
  rec.flush = () => saving;
  const sock = B.makeWASocket({
    waWebSocketUrl: wsUrl, auth: state, logger: pino({ level: process.env.WA_SIM_CLIENT_LOG || 'silent' }),
    markOnlineOnConnect: false, syncFullHistory: false, connectTimeoutMs: 5000, defaultQueryTimeoutMs: 5000,
    ...opts
  });
  rec.sock = sock;
  sock.ev.on('creds.update', () => { saving = saving.then(saveCreds); });
  // What Baileys hands the application: every upserted message and status update, in order.
  rec.upserts = [];
  rec.statusUpdates = [];
  sock.ev.on('messages.upsert', ({ messages, type }) => {
    for (const m of messages) {
      rec.upserts.push({ type, t: Date.now(), key: m.key, status: m.status, stub: m.messageStubType ?? null,
        stubParams: m.messageStubParameters ?? null, text: m.message?.conversation ?? m.message?.extendedTextMessage?.text ?? null });
    }
    rec.emit('update', {});
  });
  sock.ev.on('messages.update', (updates) => {
    for (const u of updates) rec.statusUpdates.push({ t: Date.now(), id: u.key.id, status: u.update?.status ?? null });
    rec.emit('update', {});
  });
  sock.ev.on('connection.update', (u) => {
    const t = Date.now();
    rec.updates.push({ t, ...u });
    if (u.qr) rec.qrs.push({ qr: u.qr, t });
    if (u.connection === 'open') rec.opened = t;
    if (u.connection === 'close') {
      const err = u.lastDisconnect?.error;
      rec.closed = { t, statusCode: err?.output?.statusCode, message: err?.message };
    }
    rec.emit('update', u);
  });
  /** Resolve once pred(rec) is true; reject after timeoutMs with what we saw. */
  rec.waitFor = (pred, timeoutMs = 10000, what = 'condition') => new Promise((resolve, reject) => {
    if (pred(rec)) return resolve(rec);
    const timer = setTimeout(() => {
      rec.off('update', check);
      reject(new Error(`timeout (${timeoutMs} ms) waiting for ${what}; closed=${JSON.stringify(rec.closed)} opened=${rec.opened}`));
    }, timeoutMs);
    const check = () => { if (pred(rec)) { clearTimeout(timer); rec.off('update', check); resolve(rec); } };
    rec.on('update', check);
  });
  rec.waitQr = (n = 1, ms) => rec.waitFor(r => r.qrs.length >= n || r.closed, ms, `qr #${n}`).then(r => {
    if (r.qrs.length < n) throw new Error(`closed before qr #${n}: ${JSON.stringify(r.closed)}`);
    return r.qrs[n - 1];
  });
  rec.waitOpen = (ms) => rec.waitFor(r => r.opened || r.closed, ms, 'open').then(r => {
    if (!r.opened) throw new Error(`closed instead of open: ${JSON.stringify(r.closed)}`);
    return r.opened - r.t0;
  });
  rec.waitClose = (ms) => rec.waitFor(r => r.closed, ms, 'close').then(r => r.closed);
  rec.end = async () => { if (!rec.closed) { sock.end(undefined); await rec.waitClose(3000).catch(() => {}); } await saving; };
  return rec;
}

/**
 * Full first link, as a worker would do it: register -> QR -> phone scans -> 515 -> new socket
 * with the saved creds -> open. Returns the open client and timings.
 */
export async function pairAndLogin(sim, { authDir = tmpAuthDir(), scanExtra = {}, ...opts } = {}) {
  const reg = await openClient({ wsUrl: sim.wsUrl, authDir, ...opts });
  const qr = await reg.waitQr(1);
  const tScan = Date.now();
  const scan = await sim.scan(qr.qr, scanExtra);
  if (!scan.ok) throw new Error(`scan failed: ${JSON.stringify(scan)}`);
  const closed = await reg.waitClose(5000);
  await reg.flush();
  const client = await openClient({ wsUrl: sim.wsUrl, authDir, ...opts });
  const openMs = await client.waitOpen(10000);
  return {
    client, authDir, scan, restartCode: closed.statusCode,
    timings: {
      socketToQrMs: qr.t - reg.t0, scanToCloseMs: closed.t - tScan,
      loginSocketToOpenMs: openMs, scanToOpenMs: client.opened - tScan
    }
  };
}

export const sleep = (ms) => new Promise(r => setTimeout(r, ms));

/** Poll `fn` (async) until it returns a truthy value; reject after timeoutMs with `what`. */
export async function until(fn, timeoutMs = 10000, what = 'condition', everyMs = 50) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timeout (${timeoutMs} ms) waiting for ${what}`);
    await sleep(everyMs);
  }
}
