// signal-decrypt.mjs with real libsignal through Baileys' signal repository: two parties (the simulator's Contact,
// Baileys' repository over a memory store), one of which replaces the session while the other still writes on the
// old one (what Baileys does on the first send of every new worker process). The e2e: tests/e2e/test_session_switch.py.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Contact } from '../../tests/wa_sim/contact.mjs';
import { baileysLibsignal, decryptOnCopies, restoreLibsignalDecrypt } from '../src/signal-decrypt.mjs';

const libsignal = baileysLibsignal();
const text = (m) => m.conversation;

/** Alice and Bob talk; Bob starts a new session; a message Alice sent on the old one arrives; Bob sends on the new
 *  one; Alice answers on it. Returns what each decrypt gave (text or the error). */
async function oldSessionMessageAfterANewOne() {
  const alice = new Contact({ pushName: 'Alice' });
  const bob = new Contact({ pushName: 'Bob' });
  const out = [];
  const deliver = async (from, to, msg) => {
    try {
      out.push(text(await to.decryptFrom(from.lid, msg.type, msg.ciphertext)));
    } catch (err) {
      out.push(`error: ${err.message}`);
    }
  };
  const send = (from, to, t) => from.encryptFor(to.lid, { conversation: t }, () => to.bundle.session());

  await deliver(alice, bob, await send(alice, bob, 'a1')); // pkmsg: Alice's session, Bob responds on it
  await deliver(bob, alice, await send(bob, alice, 'b1')); // msg: Alice's session is established both ways
  const onOld = await send(alice, bob, 'a2'); // msg on the old session, still in flight
  // libsignal tries the most recently used session first: the new one must be newer than the old one's last use
  await new Promise((r) => setTimeout(r, 5));
  // Bob replaces the session (Baileys: getUSyncDevices' force-refresh of "newly mapped" LIDs): a fresh bundle
  await bob.signal.injectE2ESession({ jid: alice.lid, session: alice.bundle.session() });
  await deliver(alice, bob, onOld); // decrypts with the now closed session, after an attempt on the new one
  const onNew = await send(bob, alice, 'b2'); // pkmsg on the new session
  assert.equal(onNew.type, 'pkmsg');
  await deliver(bob, alice, onNew);
  await deliver(alice, bob, await send(alice, bob, 'a3')); // Alice answers on the new session
  await deliver(bob, alice, await send(bob, alice, 'b3'));
  return out;
}

test('a message on a closed session does not spoil the open one: both ways keep decrypting', async () => {
  decryptOnCopies(libsignal);
  assert.deepEqual(await oldSessionMessageAfterANewOne(), ['a1', 'b1', 'a2', 'b2', 'a3', 'b3']);
});

test('libsignal\'s own decryptWithSessions ratchets the open session on the failed attempt (the bug fixed)', async () => {
  assert.equal(restoreLibsignalDecrypt(libsignal), true);
  try {
    const out = await oldSessionMessageAfterANewOne();
    assert.deepEqual(out.slice(0, 3), ['a1', 'b1', 'a2']);
    assert.match(out[3], /^error: Bad MAC/, `the new session's first message: ${out[3]}`);
  } finally {
    decryptOnCopies(libsignal);
  }
});

test('installing twice patches once; a record with no session still throws libsignal\'s error', async () => {
  decryptOnCopies(libsignal);
  assert.equal(decryptOnCopies(libsignal), false);
  const cipher = Object.create(libsignal.SessionCipher.prototype);
  await assert.rejects(cipher.decryptWithSessions(Buffer.alloc(0), []), (e) => e instanceof libsignal.SessionError);
});
