// prekey-pool.mjs through Baileys' own code: the pre-keys of a login upload (generateOrGetPreKeys) come from the
// pool a standby filled, each pair once, valid Curve25519 pairs; filling yields to the event loop; release() restores.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as tick } from 'node:timers/promises';
import * as B from '@whiskeysockets/baileys';
import { startKeyPairPool } from '../src/prekey-pool.mjs';

const { Curve, generateOrGetPreKeys, initAuthCreds } = B;

async function until(pred, max = 10000) {
  for (let i = 0; i < max && !pred(); i++) await tick();
  assert.ok(pred(), 'condition not reached');
}

test('the upload of a first login takes its pre-keys from the pool, each once, and they are valid pairs', async () => {
  const original = Curve.generateKeyPair;
  const pool = startKeyPairPool(Curve, 40, { chunk: 7 });
  try {
    await until(() => pool.size() === 40);
    const spy = Curve.generateKeyPair;
    const { newPreKeys } = generateOrGetPreKeys(initAuthCreds(), 50);
    assert.equal(Curve.generateKeyPair, spy);
    const pairs = Object.values(newPreKeys);
    assert.equal(pairs.length, 50);
    assert.equal(pool.size(), 0); // 40 from the pool, then 10 made on the spot
    const publics = new Set(pairs.map((p) => Buffer.from(p.public).toString('hex')));
    assert.equal(publics.size, 50); // never the same pair twice
    const other = original();
    for (const p of pairs) {
      // a working pair: both sides derive the same secret
      assert.deepEqual(Buffer.from(Curve.sharedKey(p.private, other.public)),
        Buffer.from(Curve.sharedKey(other.private, p.public)));
    }
  } finally {
    pool.release();
  }
  assert.equal(Curve.generateKeyPair, original);
});

test('filling yields to the event loop between chunks, and stop() ends it early', async () => {
  const pool = startKeyPairPool(Curve, 10000, { chunk: 5 });
  try {
    assert.equal(pool.size(), 0); // nothing generated synchronously: the caller's `go` can be read at once
    await tick();
    assert.ok(pool.size() > 0 && pool.size() <= 10);
    pool.stop();
    const n = pool.size();
    for (let i = 0; i < 20; i++) await tick();
    assert.equal(pool.size(), n);
    assert.ok(n < 10000);
  } finally {
    pool.release();
  }
  assert.equal(pool.size(), 0);
});

test('onPair sees each pair as it is made, handed out oldest first (the staged files first); hooks at stop/release', async () => {
  const seen = [];
  const calls = [];
  const creds = initAuthCreds(); // before the pool: it takes pairs too
  const pool = startKeyPairPool(Curve, 30, { chunk: 4, onPair: (p) => seen.push(p),
    onStop: () => calls.push('stop'), onRelease: () => calls.push('release') });
  try {
    await until(() => pool.size() === 30);
    assert.equal(seen.length, 30);
    const { newPreKeys } = generateOrGetPreKeys(creds, 10);
    // pre-key ids 1..10 get the first 10 pairs made, in that order
    assert.deepEqual(Object.values(newPreKeys), seen.slice(0, 10));
    assert.equal(pool.size(), 20);
    pool.stop();
    assert.deepEqual(calls, ['stop']);
  } finally {
    pool.release();
  }
  assert.deepEqual(calls, ['stop', 'stop', 'release']);
});
