// Where the login after a scan's 515 spends its time: one real worker (trace log on stderr) pairs against the
// simulator, in-process 515; prints the worker's log lines and the simulator's events from the scan to `open`,
// as ms since the scan. Trace logging is synchronous, so the absolute numbers are inflated; compare phases.
//   node bench/login_profile.mjs [--runs 3] [--scan-delay S] [--env KEY=VALUE ...]
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const WORKER = join(ROOT, 'node_worker/src/worker.mjs');
const SIM = join(ROOT, 'tests/wa_sim/main.mjs');
const TRUST = join(ROOT, 'tests/wa_sim/trust-test-root.mjs');
const args = process.argv.slice(2);
const runs = Number(args[args.indexOf('--runs') + 1] || 0) || 1;
const extraEnv = Object.fromEntries(args.flatMap((a, i) => (args[i - 1] === '--env' ? [a.split(/=(.*)/s).slice(0, 2)] : [])));
const level = extraEnv.BSUP_LOG_LEVEL ?? 'trace';
const delay = Number(args[args.indexOf('--scan-delay') + 1] || 0) || 0; // seconds from the QR to the scan

const sim = spawn(process.execPath, [SIM, '--port', '0', '--control-port', '0'], { stdio: ['ignore', 'pipe', 'ignore'] });
const ready = JSON.parse(await new Promise((r) => createInterface({ input: sim.stdout }).once('line', r)));
const call = async (method, path, body) => (await fetch(ready.controlUrl + path, {
  method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body) })).json();

const KEEP = /pre-?key|transaction|connected to WA|logging in|opened connection|passive|digest|handshake|pair/i;
for (let run = 0; run < runs; run++) {
  const dir = await mkdtemp(join(tmpdir(), 'bsup-login-profile-'));
  const lines = [];
  let tScan = 0;
  let seq = 0;
  const child = spawn(process.execPath, ['--import', TRUST, '--max-semi-space-size=1', '--optimize-for-size', '--expose-gc', WORKER], {
    env: { PATH: process.env.PATH, BSUP_PROTOCOL: '2', BSUP_TENANT: 'p', BSUP_AUTH_DIR: join(dir, 'auth'),
      BSUP_WA_URL: ready.wsUrl, BSUP_LOG_LEVEL: level, BSUP_HEARTBEAT_MS: '60000', ...extraEnv, },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  createInterface({ input: child.stderr }).on('line', (l) => {
    try { const j = JSON.parse(l); if (tScan && KEEP.test(j.msg ?? '')) lines.push([j.time, `worker: ${j.msg}${j.staged !== undefined ? ` (${j.staged})` : ""}`]); } catch { /* not JSON */ }
  });
  let scan = null;
  let tOpen = 0;
  await new Promise((resolve) => {
    createInterface({ input: child.stdout }).on('line', (l) => {
      const ev = JSON.parse(l);
      if (ev.type === 'qr' && !scan) {
        scan = new Promise((r) => setTimeout(r, delay * 1000)).then(() => call('GET', '/state')).then((s) => { seq = s.lastEventSeq; tScan = Date.now(); return call('POST', '/scan', { qr: ev.qr }); });
      }
      if (ev.type !== 'heartbeat' && tScan) lines.push([Date.now(), `event: ${ev.type}${ev.code ? ' ' + ev.code : ''}`]);
      if (ev.type === 'open') { tOpen = Date.now(); child.stdin.end(); }
    });
    child.once('exit', resolve);
  });
  for (const e of (await call('GET', `/events?since=${seq}`)).events) lines.push([e.t, `sim: ${e.type}`]);
  lines.sort((a, b) => a[0] - b[0]);
  console.log(`## run ${run + 1}: scan -> open ${tOpen - tScan} ms (log level ${level})`);
  for (const [t, what] of lines) if (t <= tOpen + 5) console.log(`${String(t - tScan).padStart(6)}  ${what}`);
  await rm(dir, { recursive: true, force: true });
}
sim.kill('SIGTERM');
process.exit(0);
