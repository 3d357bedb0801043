#!/usr/bin/env node
// CLI entry: node tests/wa_sim/main.mjs --port N [--control-port M] [--root-key test|wrong|PATH]
//   [--qr-refs 6] [--qr-first-ms 60000] [--qr-next-ms 20000] [--close-grace-ms 1000] [--verbose]
// WA_SIM_VERBOSE=1 in the environment = --verbose (every event on stderr: a test's sim.log, unchanged test code);
// WA_SIM_CONFIG='{"contactResends":3}' = a config patch applied at start (kept by POST /reset), same checks as POST /config.
// Prints ONE JSON line on stdout once both ports are bound (so callers can pass port 0).
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { B } from './baileys.mjs';
import { WaSimulator } from './server.mjs';
import { makeControlServer } from './control.mjs';

const { values: a } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'control-port': { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    'root-key': { type: 'string', default: 'test' },
    'qr-refs': { type: 'string' },
    'qr-first-ms': { type: 'string' },
    'qr-next-ms': { type: 'string' },
    'close-grace-ms': { type: 'string' },
    verbose: { type: 'boolean', default: false }
  }
});

/** test = the committed test root; wrong = a fresh random root no client trusts; else a JSON key file. */
export function loadRootKey(spec) {
  if (spec === 'wrong') return B.Curve.generateKeyPair();
  const file = spec === 'test' ? new URL('./keys/test-root.json', import.meta.url) : spec;
  const j = JSON.parse(fs.readFileSync(file, 'utf8'));
  return { public: Buffer.from(j.public, 'hex'), private: Buffer.from(j.private, 'hex') };
}

const config = {};
for (const [flag, key] of [['qr-refs', 'qrRefs'], ['qr-first-ms', 'qrFirstMs'], ['qr-next-ms', 'qrNextMs'], ['close-grace-ms', 'closeGraceMs']]) {
  if (a[flag] !== undefined) config[key] = Number(a[flag]);
}
const sim = new WaSimulator({
  rootKey: loadRootKey(a['root-key']), config,
  log: (a.verbose || process.env.WA_SIM_VERBOSE === '1') ? (e) => process.stderr.write(JSON.stringify(e) + '\n') : () => {}
});
if (process.env.WA_SIM_CONFIG) {
  sim.configure(JSON.parse(process.env.WA_SIM_CONFIG));
  sim.startConfig = { ...sim.config };
}
const wsPort = await sim.listen(Number(a.port), a.host);
const control = makeControlServer(sim);
// The control API is only ever bound to loopback, whatever --host says.
await new Promise((res, rej) => control.once('error', rej).listen(Number(a['control-port']), '127.0.0.1', res));
const controlPort = control.address().port;
process.stdout.write(JSON.stringify({
  event: 'ready', wsPort, controlPort,
  wsUrl: `ws://${a.host}:${wsPort}/ws/chat`, controlUrl: `http://127.0.0.1:${controlPort}`,
  rootKey: a['root-key'], rootPublic: sim.identity.rootPublic.toString('hex'), pid: process.pid
}) + '\n');

const shutdown = async () => {
  control.close();
  await sim.close();
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
