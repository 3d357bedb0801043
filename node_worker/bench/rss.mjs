// RSS of an idle worker: spawn src/worker.mjs with the given node flags against a loopback TCP port that
// accepts and stays silent (the socket sits in `connecting`; Baileys, its protobufs, libsignal and the
// wasm bridge are all loaded), then report the RSS from its heartbeats after it settled.
// usage: node bench/rss.mjs [--seconds N] [-- <node flags...>]
//   e.g. node bench/rss.mjs -- --max-semi-space-size=1
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const flags = dash >= 0 ? argv.slice(dash + 1) : [];
const own = dash >= 0 ? argv.slice(0, dash) : argv;
const seconds = Number(own[own.indexOf('--seconds') + 1]) || 8;

const sockets = [];
const srv = createServer((s) => sockets.push(s));
await new Promise((r) => srv.listen(0, '127.0.0.1', r));
const dir = mkdtempSync(join(tmpdir(), 'bsup-rss-'));
const worker = fileURLToPath(new URL('../src/worker.mjs', import.meta.url));
const child = spawn(process.execPath, [...flags, worker], {
  env: { PATH: process.env.PATH, BSUP_TENANT: 'bench', BSUP_AUTH_DIR: join(dir, 'auth'), BSUP_LOG_LEVEL: 'silent',
    BSUP_HEARTBEAT_MS: '500', BSUP_WA_URL: `ws://127.0.0.1:${srv.address().port}/ws/chat`,
    BSUP_SOCKET_OPTIONS: JSON.stringify({ connectTimeoutMs: (seconds + 30) * 1000 }) },
  stdio: ['pipe', 'pipe', 'inherit'],
});
const samples = [];
let buf = '';
child.stdout.on('data', (d) => {
  buf += d;
  for (let nl; (nl = buf.indexOf('\n')) >= 0; buf = buf.slice(nl + 1)) {
    const ev = JSON.parse(buf.slice(0, nl));
    if (ev.type === 'heartbeat') samples.push(ev.rss);
  }
});
await new Promise((r) => setTimeout(r, seconds * 1000));
child.stdin.end();
await new Promise((r) => child.once('exit', r));
sockets.forEach((s) => s.destroy());
srv.close();
rmSync(dir, { recursive: true, force: true });
const settled = samples.slice(Math.floor(samples.length / 2));
const mib = (b) => (b / 1048576).toFixed(1);
console.log(JSON.stringify({ flags: flags.join(' ') || '(none)', seconds, samples: samples.length,
  settledMaxMiB: mib(Math.max(...settled)), lastMiB: mib(samples.at(-1)) }));
