#!/usr/bin/env node
// Standalone smoke run: real Baileys (this process, with the test root trusted and a verifying
// Curve.verify) against the simulator (child process). Prints one JSON line per step and a summary.
//   node tests/wa_sim/smoke.mjs [--pairings N]
import { parseArgs } from 'node:util';
import { startSim, openClient, pairAndLogin, tmpAuthDir, sleep } from './harness.mjs';

const { values: a } = parseArgs({ options: { pairings: { type: 'string', default: '3' } } });
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const results = [];
const record = (step, data) => { results.push({ step, ...data }); out({ step, ...data }); };
// Short keep-alive so "silent" is detected in ~7 s instead of ~35 s.
const CLIENT = { keepAliveIntervalMs: 2000, connectTimeoutMs: 3000 };

const sim = await startSim();
out({ step: 'sim_started', wsUrl: sim.wsUrl, controlUrl: sim.controlUrl });
try {
  // 1. fresh pairings: QR -> scan -> 515 -> login with saved creds -> open
  const pairings = [];
  for (let i = 0; i < Number(a.pairings); i++) {
    const r = await pairAndLogin(sim, { ...CLIENT, scanExtra: { pushName: `Smoke ${i}` } });
    record('pair', { jid: r.scan.jid, restartCode: r.restartCode, ...r.timings, me: r.client.sock.authState.creds.me });
    pairings.push(r);
  }
  for (const p of pairings.slice(1)) await p.client.end();
  let { client, authDir, scan: { jid } } = pairings[0];

  // 2. kill variants on a logged-in device; after each, reconnect with the same creds.
  const relogin = async () => {
    client = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
    return client.waitOpen(10000);
  };
  for (const variant of ['500', '503', '515', 'stream_end', 'tcp_drop', 'ws_close', '440', 'silent']) {
    const t = Date.now();
    const k = await sim.kill(jid, variant);
    const closed = await client.waitClose(20000);
    await client.flush();
    const reloginMs = await relogin();
    record('kill', { variant, killOk: k.ok, statusCode: closed.statusCode, message: closed.message, closeMs: closed.t - t, reloginMs });
  }

  // 3. a duplicate connection for the same device: the older one is replaced (440), and counted.
  {
    const before = (await sim.state()).counters.conflictsFromDuplicates;
    const dup = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
    await dup.waitOpen(10000);
    const closed = await client.waitClose(5000);
    const st = await sim.state();
    record('duplicate', { oldStatusCode: closed.statusCode, conflictsFromDuplicates: st.counters.conflictsFromDuplicates - before,
      maxConcurrent: st.devices[jid].maxConcurrent, live: st.devices[jid].live });
    client = dup;
  }
  await client.end();

  // 4. faults on the next connection
  for (const [fault, extra] of [['refuse', {}], ['stall_handshake', {}], ['tcp_drop_after_handshake', {}],
    ['stream_error', { code: 503 }], ['login_failure', { code: 500 }], ['silent', {}]]) {
    await sim.fault(fault, extra);
    const c = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
    const closed = await c.waitClose(20000);
    await c.flush();
    record('fault', { fault, ...extra, statusCode: closed.statusCode, message: closed.message, closeMs: closed.t - c.t0 });
  }
  client = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
  await client.waitOpen(10000);

  // 5. logged out: 401 now, and the creds stay dead (next login gets <failure 401>)
  {
    const t = Date.now();
    await sim.kill(jid, '401');
    const closed = await client.waitClose(5000);
    await client.flush();
    const again = await openClient({ wsUrl: sim.wsUrl, authDir, ...CLIENT });
    const closed2 = await again.waitClose(5000);
    record('kill', { variant: '401', statusCode: closed.statusCode, closeMs: closed.t - t, reloginStatusCode: closed2.statusCode });
  }
  {
    const r = await pairAndLogin(sim, CLIENT);
    const t = Date.now();
    await sim.kill(r.scan.jid, 'device_removed');
    const closed = await r.client.waitClose(5000);
    await r.client.flush();
    record('kill', { variant: 'device_removed', statusCode: closed.statusCode, message: closed.message, closeMs: closed.t - t });
  }

  // 6. QR rotation: shorten refs (server and client must agree), scan a stale QR, then let refs run out.
  {
    await sim.configure({ qrRefs: 3, qrFirstMs: 1500, qrNextMs: 1500 });
    const c = await openClient({ wsUrl: sim.wsUrl, authDir: tmpAuthDir(), ...CLIENT, qrTimeout: 1500 });
    const q1 = await c.waitQr(1);
    const q2 = await c.waitQr(2, 5000);
    const stale = await sim.scan(q1.qr);
    record('stale_qr', { rotatedAfterMs: q2.t - q1.t, status: stale.status, ok: stale.ok, error: stale.error });
    const closed = await c.waitClose(10000);
    const st = await sim.state();
    record('qr_refs_ran_out', { qrsShown: c.qrs.length, statusCode: closed.statusCode, message: closed.message,
      closeAfterFirstQrMs: closed.t - q1.t, pairings: st.counters.pairings });
    await sim.configure({ qrRefs: 6, qrFirstMs: 60000, qrNextMs: 20000 });
  }
} finally {
  await sim.stop();
}

// 7. a simulator signed by a root the client does not trust is refused during the handshake.
{
  const wrong = await startSim(['--root-key', 'wrong']);
  try {
    const c = await openClient({ wsUrl: wrong.wsUrl, authDir: tmpAuthDir(), ...CLIENT });
    const closed = await c.waitClose(5000);
    record('wrong_root', { qrShown: c.qrs.length, statusCode: closed.statusCode, message: closed.message, closeMs: closed.t - c.t0 });
  } finally {
    await wrong.stop();
  }
}

const pairs = results.filter(r => r.step === 'pair');
const med = (k) => pairs.map(p => p[k]).sort((x, y) => x - y)[Math.floor(pairs.length / 2)];
out({ step: 'summary', pairings: pairs.length, medianSocketToQrMs: med('socketToQrMs'), medianScanToOpenMs: med('scanToOpenMs'),
  medianLoginSocketToOpenMs: med('loginSocketToOpenMs'),
  kills: Object.fromEntries(results.filter(r => r.step === 'kill').map(r => [r.variant, r.statusCode])),
  faults: Object.fromEntries(results.filter(r => r.step === 'fault').map(r => [r.fault, r.statusCode])) });
await sleep(50);
process.exit(0);
