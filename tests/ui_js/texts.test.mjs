// The console's pure helpers (supervisor/ui/texts.js) with the doctor's real texts (BSUP_DOCTOR_JSON, written by
// tests/test_ui_js.py from supervisor/ui_routes.py). Run: node --test tests/ui_js/
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { ago, closeText, qrSecondsLeft, reasonCode, stateText, toDate, useDoctor } from '../../supervisor/ui/texts.js';

useDoctor(JSON.parse(readFileSync(process.env.BSUP_DOCTOR_JSON, 'utf8')));

test('a close code gets the doctor meaning and its fix with the tenant id in place of T', () => {
  const c = closeText({ code: 401, reason: 'loggedOut', message: '', at: '2026-01-01T00:00:00Z' }, 'shop1');
  assert.equal(c.title, '401 loggedOut');
  assert.match(c.meaning, /^logged out/);
  assert.match(c.fix, /`baileys-supervisor start shop1`/);
  assert.doesNotMatch(c.fix, / T\b/);
});

test("a network error in the worker's message wins over the code's generic fix", () => {
  const c = closeText({ code: 408, reason: 'timedOut', message: 'getaddrinfo ENOTFOUND web.whatsapp.com' }, 't');
  assert.match(c.fix, /^DNS/);
  assert.equal(closeText(null, 't'), null);
  assert.match(closeText({ code: 999, reason: null, message: '' }, 't').meaning, /unknown/);
});

test('states and reason names', () => {
  assert.equal(stateText('qr', 'x').text, 'waiting for a QR scan');
  assert.equal(stateText('no-such-state', 'x').text, 'no-such-state');
  assert.equal(reasonCode('restartRequired'), 515);
});

test("QR countdown: Baileys' 60 s first ref, 20 s later ones, and a QR first seen mid-scan", () => {
  assert.equal(qrSecondsLeft({ nth: 1 }), 60);
  assert.equal(qrSecondsLeft({ nth: 3 }), 20);
  const now = Date.parse('2026-01-01T00:01:00Z');
  assert.equal(qrSecondsLeft({ since: '2026-01-01T00:00:45Z', now }), 45); // first ref, 15 s old
  assert.equal(qrSecondsLeft({ since: '2026-01-01T00:00:00Z', now: now + 5000 }), 15); // second ref, 5 s old
  assert.equal(qrSecondsLeft({ since: '2026-01-01T00:00:00Z', now: now + 25000 }), 15); // third ref, 5 s old
});

test('ago', () => {
  const now = Date.parse('2026-01-01T01:00:00Z');
  assert.equal(ago('2026-01-01T00:59:30Z', now), '30 s ago');
  assert.equal(ago('2026-01-01T00:55:00Z', now), '5 min ago');
  assert.equal(ago('2025-12-31T23:00:00Z', now), '2 h ago');
  assert.equal(ago(null, now), '—');
});

test("times: the status's ISO strings and the events' epoch seconds are the same instant", () => {
  assert.equal(toDate(1767225600.5).toISOString(), '2026-01-01T00:00:00.500Z');
  assert.equal(toDate('2026-01-01T00:00:00.500Z').getTime(), 1767225600500);
});
