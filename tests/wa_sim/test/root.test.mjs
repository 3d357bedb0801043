// Certificate chain: signed by the test root (trusted by the preload) vs. a wrong root.
// This process runs with strict-verify.mjs, i.e. a Curve.verify that really verifies,
// so acceptance proves a correctly signed chain, and refusal proves the check bites.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, openClient, tmpAuthDir } from '../harness.mjs';
import { B, realVerify } from '../baileys.mjs';
import { makeServerIdentity } from '../noise.mjs';
import { parseQr } from '../phone.mjs';

test('the chain the simulator builds verifies with a real verifier, and not against another root', () => {
  const root = B.Curve.generateKeyPair();
  const { certChain, staticKey } = makeServerIdentity(root);
  const { intermediate, leaf } = B.proto.CertChain.decode(certChain);
  const inter = B.proto.CertChain.NoiseCertificate.Details.decode(intermediate.details);
  const lf = B.proto.CertChain.NoiseCertificate.Details.decode(leaf.details);
  assert.equal(inter.issuerSerial, 0);
  assert.ok(realVerify(root.public, intermediate.details, intermediate.signature));
  assert.ok(realVerify(inter.key, leaf.details, leaf.signature));
  assert.deepEqual(Buffer.from(lf.key), staticKey.public);
  assert.equal(realVerify(B.Curve.generateKeyPair().public, intermediate.details, intermediate.signature), false);
  assert.equal(B.Curve.verify(B.Curve.generateKeyPair().public, intermediate.details, intermediate.signature), false,
    'strict-verify.mjs is active in this process');
});

test('test root: handshake passes and a QR is shown', async () => {
  const sim = await startSim(['--root-key', 'test']);
  try {
    const c = await openClient({ wsUrl: sim.wsUrl, authDir: tmpAuthDir() });
    const { qr } = await c.waitQr(1);
    assert.equal(parseQr(qr).ref.startsWith('2@'), true);
    await c.end();
  } finally { await sim.stop(); }
});

test('wrong root: Baileys refuses the server during the handshake (400), no QR', async () => {
  const sim = await startSim(['--root-key', 'wrong']);
  try {
    const c = await openClient({ wsUrl: sim.wsUrl, authDir: tmpAuthDir() });
    const closed = await c.waitClose(5000);
    assert.equal(closed.statusCode, 400);
    assert.match(closed.message, /intermediate certificate signature invalid/);
    assert.equal(c.qrs.length, 0);
    assert.equal((await sim.state()).counters.registrations, 0);
    await c.flush();
  } finally { await sim.stop(); }
});
