// The rc14 hole (Curve.verify accepts any 64-byte signature) and our patch, checked through Baileys'
// own code paths: the Noise handshake (processHandshake) and pair-success (configureSuccessfulPairing),
// and end to end through the real worker process against a loopback WebSocket server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as B from '@whiskeysockets/baileys';
import { installVerifyPatch, loadLibsignalCurve, makeStrictVerify, isPatched } from '../src/verify.mjs';

const { Curve, proto, makeNoiseHandler, NOISE_WA_HEADER, WA_CERT_DETAILS, configureSuccessfulPairing, hmacSign,
  WA_ADV_ACCOUNT_SIG_PREFIX, initAuthCreds } = B;
const baileysEntry = import.meta.resolve('@whiskeysockets/baileys');
const libsignalCurve = loadLibsignalCurve(baileysEntry);
const WORKER = fileURLToPath(new URL('../src/worker.mjs', import.meta.url));
const silent = { child: () => silent, trace() {}, debug() {}, info() {}, warn() {}, error() {}, level: 'silent' };

/** A cert chain: intermediate (issuerSerial 0, key I) signed by `root`, leaf signed by I (or `leafSigner`). */
function certChain(root, { leafSigner } = {}) {
  const inter = Curve.generateKeyPair();
  const leafKey = Curve.generateKeyPair();
  const interDetails = proto.CertChain.NoiseCertificate.Details.encode({ serial: 1, issuerSerial: 0, key: inter.public }).finish();
  const leafDetails = proto.CertChain.NoiseCertificate.Details.encode({ serial: 2, issuerSerial: 1, key: leafKey.public }).finish();
  return proto.CertChain.encode({
    intermediate: { details: interDetails, signature: Curve.sign(root.private, interDetails) },
    leaf: { details: leafDetails, signature: Curve.sign((leafSigner ?? inter).private, leafDetails) },
  }).finish();
}

/**
 * Server half of the Noise XX handshake, built from a second Baileys noise handler: in the handshake
 * phase both sides hold the same hash/key state, so a handler initialised with the *client's* ephemeral
 * as its "own" key authenticates exactly what the server must (header, e_c) and then we feed it e_s.
 */
function serverHello(clientEphemeralPub, chainBytes) {
  const eS = Curve.generateKeyPair();
  const sS = Curve.generateKeyPair();
  const srv = makeNoiseHandler({ keyPair: { private: eS.private, public: clientEphemeralPub }, NOISE_HEADER: NOISE_WA_HEADER, logger: silent });
  srv.authenticate(eS.public);
  srv.mixIntoKey(Curve.sharedKey(eS.private, clientEphemeralPub));
  const stat = srv.encrypt(sS.public);
  srv.mixIntoKey(Curve.sharedKey(sS.private, clientEphemeralPub));
  const payload = srv.encrypt(chainBytes);
  return { ephemeral: eS.public, static: stat, payload };
}

function clientHandshake(chainBytes) {
  const eC = Curve.generateKeyPair();
  const client = makeNoiseHandler({ keyPair: eC, NOISE_HEADER: NOISE_WA_HEADER, logger: silent });
  return client.processHandshake({ serverHello: serverHello(eC.public, chainBytes) }, Curve.generateKeyPair());
}

async function withRootKey(pub, fn) {
  // What the simulator's test-only preload does: trust a test root by swapping the pinned key.
  const saved = WA_CERT_DETAILS.PUBLIC_KEY;
  WA_CERT_DETAILS.PUBLIC_KEY = pub;
  try { return await fn(); } finally { WA_CERT_DETAILS.PUBLIC_KEY = saved; }
}

function pairSuccessStanza(creds, { forge = false } = {}) {
  const account = Curve.generateKeyPair();
  const details = proto.ADVDeviceIdentity.encode({ rawId: 1, timestamp: 1700000000, keyIndex: 1 }).finish();
  const msg = Buffer.concat([WA_ADV_ACCOUNT_SIG_PREFIX, details, creds.signedIdentityKey.public]);
  const accountSignature = forge ? Buffer.alloc(64, 1) : Curve.sign(account.private, msg);
  const signed = proto.ADVSignedDeviceIdentity.encode({ details, accountSignatureKey: account.public, accountSignature }).finish();
  const hmac = hmacSign(signed, Buffer.from(creds.advSecretKey, 'base64'));
  const identity = proto.ADVSignedDeviceIdentityHMAC.encode({ details: signed, hmac }).finish();
  return { tag: 'iq', attrs: { id: 'p1', type: 'set', from: 's.whatsapp.net' }, content: [{ tag: 'pair-success', attrs: {}, content: [
    { tag: 'device-identity', attrs: {}, content: identity },
    { tag: 'platform', attrs: { name: 'android' } },
    { tag: 'device', attrs: { jid: '491511:1@s.whatsapp.net', lid: '777:1@lid' } },
  ] }] };
}

// --- before the patch: document the hole (if Baileys fixes it upstream, this first test tells us) ----
test('stock rc14 Curve.verify accepts a forged signature and a wrongly rooted chain (the hole)', () => {
  assert.equal(isPatched(Curve), false);
  const kp = Curve.generateKeyPair();
  assert.equal(Curve.verify(kp.public, Buffer.from('m'), Buffer.alloc(64, 9)), true);
  assert.doesNotThrow(() => clientHandshake(certChain(Curve.generateKeyPair())));
});

test('the patched verify rejects wrong signatures and accepts right ones', () => {
  let rejects = 0;
  installVerifyPatch(Curve, libsignalCurve, { onReject: () => rejects++ });
  assert.equal(isPatched(Curve), true);
  assert.equal(rejects, 0, 'the start-up self-test does not count as a server rejection');
  const kp = Curve.generateKeyPair();
  const msg = Buffer.from('hello');
  const sig = Curve.sign(kp.private, msg);
  assert.equal(Curve.verify(kp.public, msg, sig), true);
  assert.equal(Curve.verify(Buffer.concat([Buffer.from([5]), kp.public]), msg, sig), true, '33-byte key');
  assert.equal(Curve.verify(new Uint8Array(kp.public), new Uint8Array(msg), new Uint8Array(sig)), true, 'Uint8Arrays');
  assert.equal(Curve.verify(kp.public, msg, Buffer.alloc(64, 9)), false, 'forged');
  assert.equal(Curve.verify(Curve.generateKeyPair().public, msg, sig), false, 'other key');
  assert.equal(Curve.verify(kp.public, Buffer.from('hellp'), sig), false, 'other message');
  assert.equal(Curve.verify(kp.public, msg, sig.subarray(0, 63)), false, 'short signature');
  assert.equal(Curve.verify(kp.public.subarray(0, 31), msg, sig), false, 'short key');
  assert.equal(Curve.verify(null, msg, sig), false);
  assert.equal(rejects, 6);
  const strict = makeStrictVerify({ verifySignature: () => { throw new Error('boom'); } });
  assert.equal(strict(kp.public, msg, sig), false, 'a throwing backend is a rejection');
});

test("Baileys' noise handshake refuses a chain signed by a wrong root, or a leaf not signed by the intermediate", async () => {
  const testRoot = Curve.generateKeyPair();
  assert.throws(() => clientHandshake(certChain(testRoot)), /noise intermediate certificate signature invalid/);
  await withRootKey(testRoot.public, () => {
    assert.doesNotThrow(() => clientHandshake(certChain(testRoot)), 'a correctly signed chain under the trusted root passes');
    assert.throws(() => clientHandshake(certChain(testRoot, { leafSigner: Curve.generateKeyPair() })), /noise certificate signature invalid/);
    assert.throws(() => clientHandshake(certChain(Curve.generateKeyPair())), /noise intermediate certificate signature invalid/);
  });
});

test('pair-success with a forged account signature is refused; a genuine one is accepted', () => {
  const creds = initAuthCreds();
  assert.throws(() => configureSuccessfulPairing(pairSuccessStanza(creds, { forge: true }), creds), /Failed to verify account signature/);
  const { creds: updated } = configureSuccessfulPairing(pairSuccessStanza(creds), creds);
  assert.equal(updated.me.id, '491511:1@s.whatsapp.net');
});

// --- end to end through the worker process ----------------------------------------------------------
const requireFromBaileys = createRequire(baileysEntry);
const { WebSocketServer } = requireFromBaileys('ws');

/** Loopback WS server that answers the client hello with a serverHello under `root`, then waits. */
async function fakeWaServer(root) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, path: '/ws/chat' });
  await new Promise((r) => wss.once('listening', r));
  const seen = { finish: false };
  wss.on('connection', (ws) => {
    ws.once('message', (data) => {
      data = Buffer.from(data);
      assert.deepEqual(data.subarray(0, 4), NOISE_WA_HEADER);
      const len = data.readUIntBE(4, 3);
      const hello = proto.HandshakeMessage.decode(data.subarray(7, 7 + len));
      const reply = proto.HandshakeMessage.encode({ serverHello: serverHello(hello.clientHello.ephemeral, certChain(root)) }).finish();
      const frame = Buffer.alloc(3 + reply.length);
      frame.writeUIntBE(reply.length, 0, 3);
      Buffer.from(reply).copy(frame, 3);
      ws.send(frame);
      // The client only sends clientFinish if it accepted our certificate chain; then we hang up (428).
      ws.once('message', () => { seen.finish = true; setTimeout(() => ws.close(), 50); });
    });
  });
  return { url: `ws://127.0.0.1:${wss.address().port}/ws/chat`, seen, close: () => new Promise((r) => { wss.clients.forEach((c) => c.terminate()); wss.close(r); }) };
}

async function runWorker(env, nodeArgs = []) {
  const dir = await mkdtemp(join(tmpdir(), 'bsup-verify-'));
  const child = spawn(process.execPath, [...nodeArgs, WORKER], {
    env: { PATH: process.env.PATH, BSUP_TENANT: 't', BSUP_AUTH_DIR: join(dir, 'auth'), BSUP_LOG_LEVEL: 'silent',
      BSUP_SOCKET_OPTIONS: '{"connectTimeoutMs":5000}', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.resume();
  const code = await new Promise((r) => child.once('exit', r));
  await rm(dir, { recursive: true });
  return { code, events: out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)) };
}

test('worker: a server whose chain is not signed by the pinned root is refused (error + close, exit 1)', { timeout: 20000 }, async () => {
  const srv = await fakeWaServer(Curve.generateKeyPair());
  const { code, events } = await runWorker({ BSUP_WA_URL: srv.url });
  await srv.close();
  const types = events.map((e) => e.type);
  assert.deepEqual(types, ['hello', 'connecting', 'error', 'close'], JSON.stringify(events));
  assert.equal(events[2].code, 'server_verification_failed');
  assert.equal(events[2].fatal, true);
  assert.equal(events[3].code, 400);
  assert.equal(srv.seen.finish, false, 'the client never completed the handshake');
  assert.equal(code, 1);
});

test('worker: a test-only --import preload that swaps WA_CERT_DETAILS.PUBLIC_KEY is honoured', { timeout: 20000 }, async () => {
  const root = Curve.generateKeyPair();
  const dir = await mkdtemp(join(tmpdir(), 'bsup-preload-'));
  const preload = join(dir, 'trust-test-root.mjs');
  // Resolves Baileys from the worker entry point (process.argv[1]), like the simulator's preload.
  await writeFile(preload, `
    import { createRequire } from 'node:module';
    import { pathToFileURL } from 'node:url';
    const entry = createRequire(process.argv[1]).resolve('@whiskeysockets/baileys');
    const { WA_CERT_DETAILS } = await import(pathToFileURL(entry).href);
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from('${Buffer.from(root.public).toString('hex')}', 'hex');
  `);
  const srv = await fakeWaServer(root);
  const { code, events } = await runWorker({ BSUP_WA_URL: srv.url }, ['--import', preload]);
  await srv.close();
  await rm(dir, { recursive: true });
  assert.equal(srv.seen.finish, true, 'the handshake completed under the trusted test root');
  assert.ok(!events.some((e) => e.type === 'error'), JSON.stringify(events));
  const close = events.find((e) => e.type === 'close');
  assert.equal(close.code, 428);
  assert.equal(code, 0);
});
