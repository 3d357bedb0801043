import { test } from 'node:test';
import assert from 'node:assert/strict';
import { toJsonSafe, fromJsonSafe, longToJson } from '../src/jsonsafe.mjs';

test('Buffers and Uint8Arrays become {$b64} of exactly their bytes', () => {
  const big = Buffer.from('0123456789abcdef');
  const sub = big.subarray(4, 8); // shares a pooled ArrayBuffer: only these 4 bytes may be encoded
  const out = toJsonSafe({ a: Buffer.from([1, 2, 3]), b: new Uint8Array([255]), c: sub, d: new Uint8Array(0) });
  assert.deepEqual(out, { a: { $b64: 'AQID' }, b: { $b64: '/w==' }, c: { $b64: Buffer.from('4567').toString('base64') }, d: { $b64: '' } });
  assert.deepEqual(fromJsonSafe(out).c, Buffer.from('4567'));
});

test('Longs: safe values as numbers, larger ones as exact decimal strings', async () => {
  const { default: Long } = await import('long').catch(() => ({ default: null }));
  const mk = (low, high, unsigned) => ({ low, high, unsigned });
  assert.equal(longToJson(mk(1700000000, 0, true)), 1700000000);
  assert.equal(longToJson(mk(-1, -1, false)), -1);
  assert.equal(longToJson(mk(-1, -1, true)), '18446744073709551615');
  assert.equal(longToJson(mk(0, 0x200000, false)), '9007199254740992'); // 2^53, not safe
  if (Long) {
    assert.equal(toJsonSafe(Long.fromString('123456789012345678')), '123456789012345678');
    assert.equal(toJsonSafe(Long.fromNumber(-42)), -42);
  }
  assert.equal(toJsonSafe(2n ** 64n), '18446744073709551616');
  assert.equal(toJsonSafe(5n), 5);
});

test('drops undefined/functions, survives cycles, keeps repeated siblings', () => {
  const shared = { x: 1 };
  const o = { u: undefined, f() {}, n: NaN, s: 'x', arr: [undefined, 1], shared1: shared, shared2: shared };
  o.self = o;
  const out = toJsonSafe(o);
  assert.deepEqual(out, { n: null, s: 'x', arr: [null, 1], shared1: { x: 1 }, shared2: { x: 1 }, self: null });
  JSON.stringify(out);
});

test('a real Baileys WebMessageInfo encodes losslessly for bytes and timestamps', async () => {
  const { proto } = await import('@whiskeysockets/baileys');
  const msg = proto.WebMessageInfo.decode(proto.WebMessageInfo.encode({
    key: { remoteJid: '123@s.whatsapp.net', fromMe: false, id: 'ABC' },
    messageTimestamp: 1700000000,
    message: { imageMessage: { fileSha256: Buffer.from([9, 8, 7]), fileLength: 123456789012, caption: 'hi' } },
  }).finish());
  const safe = JSON.parse(JSON.stringify(toJsonSafe([msg])))[0];
  assert.equal(safe.key.id, 'ABC');
  assert.equal(safe.messageTimestamp, 1700000000);
  assert.equal(safe.message.imageMessage.fileLength, 123456789012);
  assert.deepEqual(safe.message.imageMessage.fileSha256, { $b64: Buffer.from([9, 8, 7]).toString('base64') });
  assert.equal(safe.message.imageMessage.caption, 'hi');
});
