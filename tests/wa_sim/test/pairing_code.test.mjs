// Linking by phone-number code (requestPairingCode) with real Baileys: companion_hello, the phone types
// the code (POST /enter-code), primary_hello, companion_finish, pair-success, 515, login with saved creds.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startSim, openClient, tmpAuthDir } from '../harness.mjs';

const PHONE = '972501234567';
let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

/** A registration socket that asked for a code: returns the client, its code and every creds.update. */
async function requestCode(phone = PHONE) {
  const authDir = tmpAuthDir();
  const c = await openClient({ wsUrl: sim.wsUrl, authDir });
  c.credsUpdates = [];
  c.sock.ev.on('creds.update', (u) => c.credsUpdates.push(u));
  await c.waitQr(1); // like the worker: the registration handshake is done once the first QR is there
  const code = await c.sock.requestPairingCode(phone);
  assert.match(code, /^[1-9A-HJ-NP-TV-Z]{8}$/, 'Baileys makes an 8-character Crockford code');
  return { c, code, authDir };
}

/** The same code with one character changed (still well-formed). */
const otherCode = (code) => (code[0] === 'A' ? 'B' : 'A') + code.slice(1);

test('right code: pair-success with the derived adv secret, 515, login with the saved creds', async () => {
  await sim.control('POST', '/reset');
  const { c, code, authDir } = await requestCode();
  const pending = (await sim.state()).pendingLinkCodes;
  assert.equal(pending.length, 1);
  assert.equal(pending[0].phone, PHONE);
  assert.equal(pending[0].live, true);
  assert.equal(pending[0].attempts, 0);

  // Typed as a person would copy it from the screen: lower case with the dash.
  const res = await sim.enterCode(`+${PHONE}`, `${code.slice(0, 4)}-${code.slice(4)}`.toLowerCase(), { pushName: 'Dana' });
  assert.equal(res.ok, true, JSON.stringify(res));
  assert.equal(res.linked, true);
  assert.equal(res.companionAcked, true);
  assert.equal(res.phone, PHONE);
  assert.match(res.jid, new RegExp(`^${PHONE}:\\d+@s\\.whatsapp\\.net$`));
  // A wrong adv secret would fail Baileys' HMAC check of pair-success and end the socket with another code.
  const closed = await c.waitClose(5000);
  assert.equal(closed.statusCode, 515);
  await c.flush();
  const creds = JSON.parse(fs.readFileSync(path.join(authDir, 'creds.json'), 'utf8'));
  assert.equal(creds.registered, true);
  assert.equal(creds.me.id, res.jid, 'me.id is a device of the phone that typed the code');
  assert.equal(creds.me.lid, res.lid);
  assert.equal(creds.me.name, 'Dana');
  assert.ok(creds.account?.details, 'the ADV identity from pair-success is saved');

  const login = await openClient({ wsUrl: sim.wsUrl, authDir });
  await login.waitOpen(10000);
  assert.equal(login.sock.authState.creds.me.id, res.jid);
  const st = await sim.state();
  assert.equal(st.devices[res.jid].via, 'code');
  assert.deepEqual(st.pendingLinkCodes, []);
  const n = st.counters;
  assert.deepEqual([n.registrations, n.linkCodeRequests, n.codeEntries, n.codeEntryFailures, n.scans, n.pairings, n.logins],
    [1, 1, 1, 0, 0, 1, 1]);
  await login.end();
});

test('wrong code: nothing links, Baileys stays unregistered on its open socket; retyping the right code links', async () => {
  await sim.control('POST', '/reset');
  const { c, code } = await requestCode();
  const wrong = await sim.enterCode(PHONE, otherCode(code));
  assert.equal(wrong.status, 400);
  assert.equal(wrong.error, 'wrong_code');
  assert.match(wrong.message, /does not decrypt/);
  assert.equal(wrong.attempts, 1);
  assert.equal(wrong.companionAcked, true, 'Baileys handled the failed companion_finish before the answer');
  // Baileys' companion_finish query got an iq error: no registered flag, no account, socket still open.
  assert.equal(c.closed, null);
  assert.ok(!c.sock.authState.creds.registered);
  assert.equal(c.sock.authState.creds.account, undefined);
  assert.ok(!c.credsUpdates.some((u) => u.registered), JSON.stringify(c.credsUpdates.map((u) => Object.keys(u))));
  const st = await sim.state();
  assert.equal(st.counters.pairings, 0);
  assert.deepEqual(st.devices, {});
  assert.equal(st.counters.codeEntryFailures, 1);
  assert.ok(st.connections.some((x) => x.kind === 'registration'), 'the registration socket is still there');
  assert.equal(st.pendingLinkCodes[0].attempts, 1);

  // The user types it again (WA Web allows that): the same socket links.
  const right = await sim.enterCode(PHONE, code);
  assert.equal(right.ok, true, JSON.stringify(right));
  assert.equal(right.attempts, 2);
  assert.equal((await c.waitClose(5000)).statusCode, 515);
  await c.flush();
  assert.equal(c.sock.authState.creds.registered, true);
  assert.equal(c.sock.authState.creds.me.id, right.jid);
});

test('enter-code errors: no pending request, malformed input, the asking socket is gone', async () => {
  await sim.control('POST', '/reset');
  const none = await sim.enterCode('15550009999', 'ABCD-1234');
  assert.equal(none.status, 404);
  assert.equal(none.error, 'no_pending_request');
  assert.equal((await sim.enterCode(PHONE, '12')).error, 'bad_code');
  assert.equal((await sim.enterCode(undefined, 'ABCD1234')).error, 'bad_request');

  const { c, code } = await requestCode();
  assert.equal((await sim.enterCode('15550009999', code)).error, 'no_pending_request', 'the code is for another number');
  await c.end();
  const gone = await sim.enterCode(PHONE, code);
  assert.equal(gone.status, 409);
  assert.equal(gone.error, 'connection_closed');
  assert.equal((await sim.enterCode(PHONE, code)).error, 'no_pending_request', 'a dead request is forgotten');
  const st = await sim.state();
  assert.equal(st.counters.codeEntries, 6);
  assert.equal(st.counters.codeEntryFailures, 6);
  assert.equal(st.counters.pairings, 0);
});

test('two entries of one code at once: one links, the other is refused as in progress', async () => {
  await sim.control('POST', '/reset');
  const { c, code } = await requestCode();
  const [a, b] = await Promise.all([sim.enterCode(PHONE, code), sim.enterCode(PHONE, code)]);
  const [ok, refused] = a.ok ? [a, b] : [b, a];
  assert.equal(ok.linked, true, JSON.stringify(ok));
  assert.equal(refused.error, 'code_entry_in_progress', JSON.stringify(refused));
  assert.equal(refused.status, 409);
  assert.equal((await c.waitClose(5000)).statusCode, 515);
  assert.equal((await sim.state()).counters.pairings, 1);
  await c.end();
});

test('unmodified Baileys: creds of a code request that never linked log in as device 0 and get 401', async () => {
  // What node_worker's dropUnfinishedCodePairing guards against (Baileys issue #2494: 408, reconnect, 401).
  await sim.control('POST', '/reset');
  const { c, authDir } = await requestCode();
  await c.end();
  const again = await openClient({ wsUrl: sim.wsUrl, authDir });
  const closed = await again.waitClose(10000);
  assert.equal(closed.statusCode, 401);
  assert.equal(again.qrs.length, 0, 'no registration: Baileys logs in because creds.me is set');
  const ev = (await sim.control('GET', '/events')).events.find((e) => e.type === 'login_failed');
  assert.equal(ev.jid, `${PHONE}:0@s.whatsapp.net`);
  assert.equal(ev.reason, 'unknown_device');
  await again.flush();
});
