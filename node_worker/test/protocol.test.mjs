import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, closeSync } from 'node:fs';
import { parseCommand, makeLineSplitter, encodeMessageEvent, nextHeartbeatDelay, checkEvent, CommandError } from '../src/protocol.mjs';
import { parseEnv, parseVersionPolicy, parseSocketOptions, EnvError, DEFAULT_BROWSER } from '../src/env.mjs';

const base = { BSUP_TENANT: 't1', BSUP_AUTH_DIR: '/tmp/x/auth' };

test('parseEnv: defaults and full settings', () => {
  const s = parseEnv(base);
  assert.equal(s.tenant, 't1');
  assert.deepEqual(s.browser, DEFAULT_BROWSER);
  assert.deepEqual(s.version, { policy: 'bundled' });
  assert.equal(s.logLevel, 'warn');
  assert.equal(s.heartbeatMs, 5000);
  assert.equal(s.lockFd, null);
  const fd = openSync('/dev/null', 'r');
  try {
    const full = parseEnv({ ...base, BSUP_PROTOCOL: '1', BSUP_LOCK_FD: String(fd), BSUP_WA_URL: 'ws://127.0.0.1:1234/ws/chat',
      BSUP_BROWSER: '["A","Chrome","1.0"]', BSUP_VERSION_POLICY: '2.3000.1015901307', BSUP_LOG_LEVEL: 'silent',
      BSUP_HEARTBEAT_MS: '250', BSUP_SOCKET_OPTIONS: '{"connectTimeoutMs":1000,"qrTimeout":5000}' });
    assert.equal(full.lockFd, fd);
    assert.deepEqual(full.version, { policy: 'explicit', version: [2, 3000, 1015901307] });
    assert.deepEqual(full.socketOptions, { connectTimeoutMs: 1000, qrTimeout: 5000 });
    assert.deepEqual(full.browser, ['A', 'Chrome', '1.0']);
  } finally { closeSync(fd); }
});

test('parseEnv: every invalid variable is an EnvError naming it', () => {
  const bad = [
    [{ BSUP_AUTH_DIR: '/a' }, 'BSUP_TENANT'],
    [{ BSUP_TENANT: 't' }, 'BSUP_AUTH_DIR'],
    [{ ...base, BSUP_AUTH_DIR: 'rel/auth' }, 'BSUP_AUTH_DIR'],
    [{ ...base, BSUP_LOCK_FD: 'x' }, 'BSUP_LOCK_FD'],
    [{ ...base, BSUP_LOCK_FD: '987' }, 'BSUP_LOCK_FD'], // not open
    [{ ...base, BSUP_WA_URL: 'http://x/' }, 'BSUP_WA_URL'],
    [{ ...base, BSUP_BROWSER: '["a","b"]' }, 'BSUP_BROWSER'],
    [{ ...base, BSUP_BROWSER: 'nope' }, 'BSUP_BROWSER'],
    [{ ...base, BSUP_VERSION_POLICY: 'newest' }, 'BSUP_VERSION_POLICY'],
    [{ ...base, BSUP_LOG_LEVEL: 'loud' }, 'BSUP_LOG_LEVEL'],
    [{ ...base, BSUP_HEARTBEAT_MS: '-5' }, 'BSUP_HEARTBEAT_MS'],
    [{ ...base, BSUP_SOCKET_OPTIONS: '{"auth":1}' }, 'BSUP_SOCKET_OPTIONS'],
    [{ ...base, BSUP_SOCKET_OPTIONS: '{"connectTimeoutMs":"1"}' }, 'BSUP_SOCKET_OPTIONS'],
    [{ ...base, BSUP_SOCKET_OPTIONS: '[1]' }, 'BSUP_SOCKET_OPTIONS'],
  ];
  for (const [env, variable] of bad) {
    assert.throws(() => parseEnv(env), (e) => e instanceof EnvError && e.variable === variable, JSON.stringify(env));
  }
  assert.deepEqual(parseVersionPolicy('latest'), { policy: 'latest' });
  assert.deepEqual(parseSocketOptions(''), {});
});

test('parseCommand: valid commands, ids, and rejects', () => {
  assert.deepEqual(parseCommand('{"cmd":"ping","id":"1"}'), { cmd: 'ping', id: '1' });
  assert.deepEqual(parseCommand('{"cmd":"stop"}'), { cmd: 'stop', id: undefined });
  assert.deepEqual(parseCommand('{"cmd":"pairing_code","id":"p","phone":"491701234567"}'), { cmd: 'pairing_code', id: 'p', phone: '491701234567' });
  const rejects = [['nope', undefined], ['[1]', undefined], ['{"id":"a"}', 'a'], ['{"cmd":"dance","id":"b"}', 'b'],
    ['{"cmd":"pairing_code","id":"c","phone":"+49170"}', 'c'], ['{"cmd":"ping","id":5}', undefined]];
  for (const [line, id] of rejects) {
    assert.throws(() => parseCommand(line), (e) => e instanceof CommandError && e.code === 'bad_command' && e.id === id, line);
  }
});

test('line splitter: chunked input, CRLF, blank lines, oversized lines skipped', () => {
  const lines = []; let tooLong = 0;
  const feed = makeLineSplitter((l) => lines.push(l), () => tooLong++, 10);
  feed(Buffer.from('ab')); feed(Buffer.from('c\r\n\n12345678901234')); feed(Buffer.from('5\nok\n'));
  assert.deepEqual(lines, ['abc', 'ok']);
  assert.equal(tooLong, 1);
});

test('message events: one message per line with its ref; a too-large message becomes an error', () => {
  const small = encodeMessageEvent({ upsertType: 'notify', message: { key: { id: 'a' } }, ref: 'r1' }, 1000);
  const ev = JSON.parse(small.line);
  assert.deepEqual([ev.messages.length, ev.ref, ev.recovered], [1, 'r1', false]);
  assert.deepEqual(checkEvent(ev), []);
  const huge = encodeMessageEvent({ upsertType: 'append', message: { key: { id: 'huge', remoteJid: 'j' }, body: 'y'.repeat(5000) },
    ref: 'r2', recovered: true }, 1000);
  assert.equal(huge.line, undefined);
  assert.equal(huge.error.code, 'message_too_large');
  assert.match(huge.error.message, /huge/);
  assert.deepEqual(checkEvent(huge.error), []);
});

test('checkEvent: strict by the description (unknown type, missing, wrong type, undeclared field)', () => {
  assert.deepEqual(checkEvent({ type: 'creds', registered: true, me: null, ts: 1 }), []);
  assert.deepEqual(checkEvent({ type: 'nope' }), ['unknown event type "nope"']);
  assert.deepEqual(checkEvent({ type: 'creds' }), ['creds.registered is required']);
  assert.deepEqual(checkEvent({ type: 'close', code: '515' }), ['close.code must be int or null']);
  assert.deepEqual(checkEvent({ type: 'qr', qr: 'x', extra: 1 }), ['qr.extra is not in the description']);
});

test('standby: BSUP_STANDBY is 0/1 (default off); go is a known command', () => {
  assert.equal(parseEnv(base).standby, false);
  assert.equal(parseEnv({ ...base, BSUP_STANDBY: '0' }).standby, false);
  assert.equal(parseEnv({ ...base, BSUP_STANDBY: '1' }).standby, true);
  for (const bad of ['true', '2', 'yes']) {
    assert.throws(() => parseEnv({ ...base, BSUP_STANDBY: bad }), (e) => e instanceof EnvError && e.variable === 'BSUP_STANDBY');
  }
  assert.deepEqual(parseCommand('{"cmd":"go","id":"g"}'), { cmd: 'go', id: 'g' });
});

test('nextHeartbeatDelay: the next multiple of the interval on the wall clock, never two beats in a row', () => {
  assert.equal(nextHeartbeatDelay(5000, 1_700_000_001_000), 4000);
  assert.equal(nextHeartbeatDelay(5000, 1_700_000_000_000), 5000); // on a boundary: the next one
  assert.equal(nextHeartbeatDelay(5000, 1_700_000_004_999), 5001); // fired 1 ms early: skip that boundary
  assert.equal(nextHeartbeatDelay(5000, 1_700_000_004_501), 5499); // < 10 % of the interval left: skip it
  assert.equal(nextHeartbeatDelay(5000, 1_700_000_004_500), 500);
  // Two workers started at different times beat at the same instants.
  const at = (start) => start + nextHeartbeatDelay(250, start);
  assert.equal(at(1_000_010), at(1_000_130));
});
