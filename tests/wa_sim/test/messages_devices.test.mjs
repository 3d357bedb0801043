// Messages across devices: a tenant's send fans out to its own phone (device 0, a copy it can
// decrypt) and to the account's other linked companions; one tenant can write to another.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, pairAndLogin, until, MESSAGING_CLIENT as CLIENT } from '../harness.mjs';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

test('a send is copied to the own phone and to the other companion of the same account', async () => {
  const a = await pairAndLogin(sim, CLIENT);
  const b = await pairAndLogin(sim, { ...CLIENT, scanExtra: { phone: a.scan.phone } }); // 2nd device, same number
  assert.equal(b.scan.phone, a.scan.phone);
  assert.notEqual(b.scan.jid, a.scan.jid);
  const c = await sim.newContact();
  const sent = await a.client.sock.sendMessage(c.jid, { text: 'seen everywhere' });
  await until(async () => (await sim.inbox(c.phone)).messages.some(m => m.id === sent.key.id), 10000, 'contact decrypts');
  // The phone decrypts its copy: a deviceSentMessage naming the chat it was sent to.
  const phone = await until(async () => {
    const box = await sim.inbox(a.scan.phone);
    return box.messages.some(m => m.id === sent.key.id) && box;
  }, 10000, 'phone copy');
  const copy = phone.messages.find(m => m.id === sent.key.id);
  assert.equal(copy.text, 'seen everywhere');
  assert.equal(copy.destination, c.jid);
  // The other companion gets it as its own sent message, in the contact's chat.
  await b.client.waitFor(x => x.upserts.some(u => u.key.id === sent.key.id), 10000, 'copy on device b');
  const u = b.client.upserts.find(x => x.key.id === sent.key.id);
  assert.deepEqual([u.text, u.key.fromMe, u.key.remoteJid], ['seen everywhere', true, c.jid]);
  await until(async () => (await sim.state()).devices[b.scan.jid].queue.length === 0, 5000, 'device b receipted its copy');
  await a.client.end();
  await b.client.end();
});

test('one tenant writes to another: the other decrypts it', async () => {
  const a = await pairAndLogin(sim, CLIENT);
  const b = await pairAndLogin(sim, CLIENT);
  const to = `${b.scan.phone}@s.whatsapp.net`;
  const sent = await a.client.sock.sendMessage(to, { text: 'tenant to tenant' });
  await b.client.waitFor(x => x.upserts.some(u => u.key.id === sent.key.id), 10000, 'upsert on b');
  const u = b.client.upserts.find(x => x.key.id === sent.key.id);
  assert.deepEqual([u.text, u.key.fromMe], ['tenant to tenant', false]);
  await a.client.end();
  await b.client.end();
});
