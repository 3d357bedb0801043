// RSS of an idle worker: spawn src/worker.mjs with the given node flags against a loopback TCP port that
// accepts and stays silent (the socket sits in `connecting`; Baileys, its protobufs, libsignal and the
// wasm bridge are all loaded), then report the RSS from its heartbeats after it settled, and what the RSS is
// made of at the end (/proc/PID/smaps_rollup + /proc/PID/smaps: node binary text vs anonymous memory).
// usage: node bench/rss.mjs [--seconds N] [--runs N] [--env K=V ...] [--worker FILE] [-- <node flags...>]
//   e.g. node bench/rss.mjs --env MALLOC_ARENA_MAX=1 -- --max-semi-space-size=1
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const flags = dash >= 0 ? argv.slice(dash + 1) : [];
const own = dash >= 0 ? argv.slice(0, dash) : argv;
const opt = (name, dflt) => (own.includes(name) ? Number(own[own.indexOf(name) + 1]) : dflt);
const seconds = opt('--seconds', 8);
const runs = opt('--runs', 1);
const extraEnv = {};
own.forEach((a, i) => {
  if (a === '--env') { const [k, ...v] = own[i + 1].split('='); extraEnv[k] = v.join('='); }
});
const mib = (b) => (b / 1048576).toFixed(1);

/** kB fields of smaps_rollup, and the RSS of the node binary's own mappings (text + data) from smaps. */
function breakdown(pid) {
  const roll = {};
  for (const line of readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8').split('\n')) {
    const m = /^(\w+):\s+(\d+) kB/.exec(line);
    if (m) roll[m[1]] = Number(m[2]);
  }
  const byFile = {};
  let cur = null;
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const h = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (h) { cur = h[1] || '[anon]'; continue; }
    const m = /^Rss:\s+(\d+) kB/.exec(line);
    if (m && cur) byFile[cur] = (byFile[cur] ?? 0) + Number(m[1]);
  }
  const top = Object.entries(byFile).sort((a, b) => b[1] - a[1]).slice(0, 6)
    .map(([k, v]) => `${k.replace(/^.*\//, '')}=${(v / 1024).toFixed(1)}`);
  return { rssMiB: (roll.Rss / 1024).toFixed(1), pssMiB: (roll.Pss / 1024).toFixed(1),
    anonMiB: (roll.Anonymous / 1024).toFixed(1), fileMiB: ((roll.Rss - roll.Anonymous) / 1024).toFixed(1),
    top: top.join(' ') };
}

async function once() {
  const sockets = [];
  const srv = createServer((s) => sockets.push(s));
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const dir = mkdtempSync(join(tmpdir(), 'bsup-rss-'));
  const worker = own.includes('--worker') ? own[own.indexOf('--worker') + 1]
    : fileURLToPath(new URL('../src/worker.mjs', import.meta.url));
  const t0 = performance.now();
  const child = spawn(process.execPath, [...flags, worker], {
    env: { PATH: process.env.PATH, ...extraEnv, BSUP_TENANT: 'bench', BSUP_AUTH_DIR: join(dir, 'auth'),
      BSUP_LOG_LEVEL: 'silent', BSUP_HEARTBEAT_MS: '500', BSUP_WA_URL: `ws://127.0.0.1:${srv.address().port}/ws/chat`,
      BSUP_SOCKET_OPTIONS: JSON.stringify({ connectTimeoutMs: (seconds + 30) * 1000 }) },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let exitInfo = null;
  const exited = new Promise((r) => child.once('exit', (code, sig) => { exitInfo = { code, sig }; r(); }));
  const samples = [];
  const types = new Set();
  let buf = '';
  let helloMs = null;
  child.stdout.on('data', (d) => {
    buf += d;
    for (let nl; (nl = buf.indexOf('\n')) >= 0; buf = buf.slice(nl + 1)) {
      const ev = JSON.parse(buf.slice(0, nl));
      types.add(ev.type);
      if (ev.type === 'hello') helloMs = performance.now() - t0;
      if (ev.type === 'heartbeat') samples.push(ev.rss);
    }
  });
  await Promise.race([exited, new Promise((r) => setTimeout(r, seconds * 1000))]);
  let bd = null;
  if (!exitInfo) try { bd = breakdown(child.pid); } catch { /* exited */ }
  const early = exitInfo;
  child.stdin.end();
  await exited;
  sockets.forEach((s) => s.destroy());
  srv.close();
  rmSync(dir, { recursive: true, force: true });
  const settled = samples.slice(Math.floor(samples.length / 2));
  console.log(JSON.stringify({ flags: flags.join(' ') || '(none)', worker: worker.replace(/^.*\//, ''), env: extraEnv, seconds, samples: samples.length,
    ...(early ? { exitedEarly: early, events: [...types] } : {}), helloMs: helloMs && Math.round(helloMs), settledMaxMiB: settled.length ? mib(Math.max(...settled)) : null, lastMiB: samples.length ? mib(samples.at(-1)) : null,
    ...(bd ?? {}) }));
}

for (let i = 0; i < runs; i++) await once();
