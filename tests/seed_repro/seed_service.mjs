// The seed note's proposed fix (shared/seed/original-he.txt, section 1), transcribed as faithfully as this
// machine allows, so the suite can show WHY this project exists: run with real Baileys against the simulator,
// it still hangs after the scan. Differences from the note, all forced by the environment and none touching the
// session logic: node:http instead of express (not installed), the raw QR string instead of a `qrcode` PNG data
// URL (not installed; `hasQR` is the same truth), the bundled WhatsApp version instead of
// fetchLatestBaileysVersion() (no internet), `waWebSocketUrl` pointed at the simulator, and the webhook left out.
//
// The bug it reproduces: after the 515 close that WhatsApp sends right after a scan, `setTimeout(() =>
// startSession(tenantId), 2000)` finds the old entry with its dead `sock` and returns it (`if (cur?.sock) return
// cur;`). No new socket is ever made, the stale QR is never cleared: status stays connected:false, hasQR:true.
//
// Usage: node --import <tests/wa_sim/trust-test-root.mjs> seed_service.mjs <port> <storageDir> <wsUrl>
import http from 'node:http';
import path from 'node:path';
import fs from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../node_worker/package.json', import.meta.url));
const baileys = require('@whiskeysockets/baileys');
const makeWASocket = baileys.default?.default ?? baileys.default ?? baileys.makeWASocket;
const { useMultiFileAuthState, DisconnectReason } = baileys;
const pino = require('pino');

const [port, storage, wsUrl] = process.argv.slice(2);
const authDir = (tenantId) => {
  const dir = path.join(storage, 'whatsapp', String(tenantId), 'auth');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
};

// ---- the note's code, unchanged in substance -------------------------------------------------------------
const sessions = new Map(); // tenantId -> { sock, saveCreds, qrDataUrl, connected, starting, pushName }
async function startSession(tenantId) {
  const cur = sessions.get(tenantId);
  if (cur?.sock) return cur;
  if (cur?.starting) return cur;
  sessions.set(tenantId, { starting: true });
  const authPath = authDir(tenantId);
  const { state, saveCreds } = await useMultiFileAuthState(authPath);
  const sock = makeWASocket({
    auth: state,
    printQRInTerminal: false,
    browser: ['AgentLocator', 'Chrome', '10.0'],
    waWebSocketUrl: wsUrl,
    logger: pino({ level: 'silent' }),
  });
  const s = { sock, saveCreds, qrDataUrl: '', connected: false, pushName: '', starting: false };
  sessions.set(tenantId, s);
  sock.ev.on('creds.update', saveCreds);
  sock.ev.on('connection.update', async ({ connection, lastDisconnect, qr }) => {
    try {
      if (qr) s.qrDataUrl = qr;
      if (connection === 'open') {
        s.connected = true; s.qrDataUrl = '';
        s.pushName = sock?.user?.name || sock?.user?.id || '';
        console.log('[update]', JSON.stringify({ tenantId, connection: 'open', pushName: s.pushName }));
      }
      if (connection === 'close') {
        s.connected = false;
        const reason = lastDisconnect?.error?.output?.statusCode;
        console.log('[update]', JSON.stringify({ tenantId, connection: 'close', reason }));
        if (reason !== DisconnectReason.loggedOut) setTimeout(() => startSession(tenantId), 2000);
      }
    } catch (e) { console.error('[connection.update] error', e); }
  });
  return s;
}
// ----------------------------------------------------------------------------------------------------------

const json = (res, code, body) => { res.writeHead(code, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)); };
const server = http.createServer(async (req, res) => {
  const m = req.url.match(/^\/whatsapp\/([^/]+)\/(start|status|qr)$/);
  if (req.url === '/healthz') return json(res, 200, { ok: true });
  if (!m) return json(res, 404, { error: 'not_found' });
  const [, tenantId, action] = m;
  if (action === 'start' && req.method === 'POST') {
    try { await startSession(tenantId); return json(res, 200, { ok: true }); }
    catch (e) { console.error('start error', e); return json(res, 500, { error: 'start_failed' }); }
  }
  const s = sessions.get(tenantId);
  if (action === 'status') return json(res, 200, { connected: !!s?.connected, hasQR: !!s?.qrDataUrl, pushName: s?.pushName || '' });
  if (action === 'qr') return s?.qrDataUrl ? json(res, 200, { qr: s.qrDataUrl }) : json(res, 404, { dataUrl: null });
  return json(res, 405, { error: 'method_not_allowed' });
});
server.listen(Number(port), '127.0.0.1', () => console.log(JSON.stringify({ event: 'ready', port: server.address().port })));
process.on('SIGTERM', () => process.exit(0));
