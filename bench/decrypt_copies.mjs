// What decrypting on copies costs (node_worker/src/signal-decrypt.mjs, docs/benchmarks.md "Decrypt on copies"):
// real libsignal through Baileys' repository (two simulator Contacts), N messages from Alice decrypted by Bob with
// libsignal's own decryptWithSessions (the baseline) and with the copies, alternated in rounds in one process.
// Bob's record holds SESSIONS sessions with Alice (the newest one used), the case where the old method was wrong.
//   node bench/decrypt_copies.mjs [N=500] [ROUNDS=3] [SESSIONS=1]
import { Contact } from '../tests/wa_sim/contact.mjs';
import { libsignal } from '../tests/wa_sim/baileys.mjs';
import { decryptOnCopies, restoreLibsignalDecrypt } from '../node_worker/src/signal-decrypt.mjs';

const [N = 500, ROUNDS = 3, SESSIONS = 1] = process.argv.slice(2).map(Number);
const quietConsole = () => { const keep = { ...console }; console.info = console.warn = () => {}; return () => Object.assign(console, keep); };

async function run(mode) {
  if (mode === 'copies') decryptOnCopies(libsignal); else restoreLibsignalDecrypt(libsignal);
  const alice = new Contact({ pushName: 'Alice' });
  const bob = new Contact({ pushName: 'Bob' });
  for (let s = 0; s < SESSIONS; s++) { // each a fresh session started by Alice; Bob answers so Alice sends `msg`
    if (s) await alice.dropSession(bob.lid);
    const m = await alice.encryptFor(bob.lid, { conversation: 'hi' }, () => bob.bundle.session());
    await bob.decryptFrom(alice.lid, m.type, m.ciphertext);
    const r = await bob.encryptFor(alice.lid, { conversation: 'hey' }, () => alice.bundle.session());
    await alice.decryptFrom(bob.lid, r.type, r.ciphertext);
  }
  const msgs = [];
  for (let i = 0; i < N; i++) msgs.push(await alice.encryptFor(bob.lid, { conversation: `m${i}` }, () => null));
  const t0 = process.hrtime.bigint();
  for (const m of msgs) await bob.decryptFrom(alice.lid, m.type, m.ciphertext);
  return Number(process.hrtime.bigint() - t0) / 1e6 / N;
}

const restore = quietConsole();
const rows = [];
for (let r = 0; r < ROUNDS; r++) for (const mode of ['libsignal', 'copies']) rows.push({ mode, ms: await run(mode) });
restore();
const med = (mode) => { const v = rows.filter((x) => x.mode === mode).map((x) => x.ms).sort((a, b) => a - b); return v[v.length >> 1]; };
const base = med('libsignal');
const copies = med('copies');
console.log(JSON.stringify({ n: N, rounds: ROUNDS, sessions: SESSIONS, ms_per_decrypt: { libsignal: +base.toFixed(3),
  copies: +copies.toFixed(3) }, ratio: +(copies / base).toFixed(3) }));
