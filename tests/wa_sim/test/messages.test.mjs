// Messages, step 1: the server keeps what each device uploads (pre-keys, signed pre-key,
// identity, registration id), which later lets contacts encrypt to it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, openClient, pairAndLogin } from '../harness.mjs';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

test('the pre-key upload after the first login is kept with the identity it belongs to', async () => {
  const r = await pairAndLogin(sim);
  const { creds } = r.client.sock.authState;
  const dev = (await sim.state()).devices[r.scan.jid];
  assert.equal(dev.bundle.registrationId, creds.registrationId);
  assert.equal(dev.bundle.identity, Buffer.from(creds.signedIdentityKey.public).toString('base64'));
  assert.equal(dev.bundle.signedPreKeyId, creds.signedPreKey.keyId);
  assert.equal(dev.bundle.preKeysLeft, 812);
  assert.equal(dev.bundle.preKeysHandedOut, 0);
  const uploaded = (await sim.control('GET', '/events')).events.find(e => e.type === 'prekeys_uploaded');
  assert.equal(uploaded.identityMatchesPairing, true, 'the uploaded identity is the one the device paired with');

  // A re-login uploads nothing (count is 812): the kept bundle is unchanged.
  await r.client.end();
  const again = await openClient({ wsUrl: sim.wsUrl, authDir: r.authDir });
  await again.waitOpen(10000);
  assert.equal((await sim.state()).devices[r.scan.jid].bundle.preKeysLeft, 812);
  await again.end();
});
