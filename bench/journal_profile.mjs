// Where the time goes per inbound message in the worker's decrypt path (docs/benchmarks.md, "Incoming messages"):
// real Baileys in this process against the WhatsApp Web simulator, the worker's own auth store (auth-state.mjs)
// and decrypt journal (journal.mjs); N messages (`msg`, after one reply) queued while offline, then one login.
//
//   node bench/journal_profile.mjs [N=300] [on|off]
//
// Prints msg/s (first to last upsert) and per message: the whole wrapped decrypt, libsignal's decrypt alone, and
// the key store's set() (the ratchet commit: the session file, durable; with the journal on it also waits for the
// journal's fdatasync, which overlaps the session write). wrapped - inner - set = what the journal adds serially.
import { startSim, pairAndLogin, openClient, until, MESSAGING_CLIENT, tmpAuthDir } from '../tests/wa_sim/harness.mjs';
import { B } from '../tests/wa_sim/baileys.mjs';
import { openJournal } from '../node_worker/src/journal.mjs';
import { useAtomicMultiFileAuthState } from '../node_worker/src/auth-state.mjs';

const N = Number(process.argv[2] ?? 300);
const MODE = process.argv[3] ?? 'on';
const sim = await startSim();
const base = B.DEFAULT_CONNECTION_CONFIG.makeSignalRepository;
const authDir = tmpAuthDir();
const r = await pairAndLogin(sim, { ...MESSAGING_CLIENT, authDir });
const c = await sim.newContact({ pushName: 'Bob' });
const first = await sim.contactSend(c.phone, r.scan.jid, 'hi');
await r.client.waitFor((x) => x.upserts.some((u) => u.key.id === first.id), 10000, 'first');
await r.client.sock.sendMessage(c.jid, { text: 'hello' }); // the contact's next messages are `msg`, not `pkmsg`
await until(async () => (await sim.inbox(c.phone)).messages.some((m) => m.text === 'hello'), 10000, 'reply');
await r.client.end();
for (let i = 0; i < N; i++) await sim.contactSend(c.phone, r.scan.jid, `m${i}`);

const st = await useAtomicMultiFileAuthState(authDir);
const T = { wrapped: 0, inner: 0, set: 0, n: 0 };
const set0 = st.state.keys.set;
st.state.keys.set = async (d) => { const t = performance.now(); await set0(d); T.set += performance.now() - t; };
const j = await openJournal(authDir);
const timed = (target, key) => new Proxy(target, { get(t, p, rcv) {
  if (p !== 'decryptMessage') return Reflect.get(t, p, rcv);
  return async (a) => {
    const t0 = performance.now();
    const pt = await t.decryptMessage(a);
    T[key] += performance.now() - t0;
    if (key === 'wrapped') T.n++;
    return pt;
  };
} });
const client = await openClient({ wsUrl: sim.wsUrl, authDir, ...MESSAGING_CLIENT, auth: st.state,
  makeSignalRepository: (auth, logger, pn) => {
    const inner = timed(base(auth, logger, pn), 'inner');
    return timed(MODE === 'on' ? j.wrapRepository(inner, auth.keys) : inner, 'wrapped');
  } });
if (MODE === 'on') client.sock.ws.on('CB:message', j.noteStanza);
let t0 = null;
client.sock.ev.on('messages.upsert', ({ messages }) => {
  for (const m of messages) {
    t0 ??= performance.now();
    const x = MODE === 'on' ? j.refFor(m) : null;
    if (x?.journaled) j.ack([x.ref]); // as the daemon would, at once
  }
});
await client.waitFor((x) => x.upserts.filter((u) => /^m\d+$/.test(u.text ?? '')).length >= N, 300000, 'all upserts');
const el = performance.now() - t0;
const per = (v) => +(v / T.n).toFixed(2);
console.log(JSON.stringify({ mode: MODE, n: N, msg_s: +(N / el * 1000).toFixed(1), wrapped_ms: per(T.wrapped),
  inner_decrypt_ms: per(MODE === 'on' ? T.inner : T.inner - T.set), key_set_ms: per(T.set) }));
await client.end();
await sim.stop();
process.exit(0);
