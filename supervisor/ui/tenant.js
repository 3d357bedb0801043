// One tenant: live through its SSE stream (an events-token lets EventSource open it without the secret), the QR as
// an image that replaces itself at each rotation, the actions, the pairing-code form and the recent events.

import { ApiError, api, url } from './api.js';
import { FIRST_QR_S, NEXT_QR_S, ago, clock, closeText, el, qrSecondsLeft, reasonCode, stateBadge, stateText, toDate } from './texts.js';

const MAX_EVENTS = 30;
const $ = (id) => document.getElementById(id);

let tid = null;
let es = null;
let gen = 0; // a view generation: answers for a tenant view that was left are dropped
let status = null;
// QR events since the tenant entered `qr` (the first one lives longer); null: the view opened mid-scan, so the next
// QR event is a later one whatever the count.
let qrCount = null;
let qrDeadline = 0;
let tick = null;
let onError = () => {};

function setMsg(text, bad = false) {
  $('t-msg').textContent = text;
  $('t-msg').classList.toggle('bad', bad);
}

function addEvent(text, at) {
  const list = $('t-events');
  list.prepend(el('li', {}, el('time', { datetime: toDate(at).toISOString() }, clock(at)), ' ', text));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function detail(name, value) {
  return [el('dt', {}, name), el('dd', {}, value ?? '—')];
}

// "waiting for a QR scan (waiting_for_scan), since 12 s ago": redrawn every second, the times move.
function stateLine() {
  const st = status;
  const words = stateText(st ? st.state : 'stopped', tid);
  const reason = st && st.stateReason ? ` (${st.stateReason})` : '';
  const left = st && st.nextRetryAt ? Math.max(0, Math.round((Date.parse(st.nextRetryAt) - Date.now()) / 1000)) : null;
  const retry = left === null ? '' : `, next attempt in ${left} s`;
  $('t-reason').textContent = `${words.text}${reason}, since ${st ? ago(st.since) : '—'}${retry}`;
}

function applyStatus(st) {
  status = st;
  const state = st ? st.state : 'stopped';
  $('t-state').replaceChildren(stateBadge(state));
  const words = stateText(state, tid);
  stateLine();
  const c = st && closeText(st.lastDisconnect, tid);
  const dl = $('t-details');
  dl.replaceChildren(
    ...detail('Pid', st && st.pid), ...detail('Standby pid', st && st.standbyPid),
    ...detail('Restarts', st ? st.restarts : 0),
    ...detail('Linked', st && st.me ? `${st.pushName || ''} ${st.me.id}`.trim() : 'no'),
    ...detail('Auth', st && st.auth ? `${st.auth.registered ? 'registered' : 'not registered'}, ${st.auth.files} files` : '—'),
    ...detail('Clock skew', st && st.clock && st.clock.skewMs != null ? `${st.clock.skewMs} ms` : '—'),
    ...detail('Last disconnect', c ? el('span', {}, el('strong', {}, c.title), ` ${ago(st.lastDisconnect.at)}: ${c.meaning}`,
      c.message ? el('div', { class: 'muted' }, `worker: ${c.message}`) : null,
      c.fix ? el('div', { class: 'fix' }, `Fix: ${c.fix}`) : null) : 'none'),
    ...detail('What to do', words.fix || '—'));
  if (state !== 'qr') showQr(null);
  else if (st.hasQR && !$('qr-img').getAttribute('src')) loadQr();
  // A pairing code is only possible while the worker waits for a scan (the API answers not_ready/already_linked).
  $('pair-form').hidden = state !== 'qr';
  if (state === 'connected') $('pair-code').textContent = '';
}

function showQr(dataUrl) {
  $('qr-box').hidden = !dataUrl;
  if (dataUrl) {
    $('qr-img').src = dataUrl;
    $('qr-img').alt = `WhatsApp QR code to link tenant ${tid}; it changes every ${NEXT_QR_S} to ${FIRST_QR_S} s`;
  } else {
    $('qr-img').removeAttribute('src');
  }
  const state = status ? status.state : 'stopped';
  $('qr-none').textContent = dataUrl ? '' : state === 'connected' ? 'Linked: this tenant is connected.'
    : state === 'qr' ? 'Waiting for the QR…' : `No QR: ${stateText(state, tid).text}.`;
  $('qr-none').hidden = !!dataUrl;
}

function countdown() {
  stateLine();
  const left = Math.max(0, Math.round((qrDeadline - Date.now()) / 1000));
  $('qr-count').textContent = !$('qr-box').hidden && qrDeadline ? (left > 0 ? `New QR in ${left} s` : 'A new QR is coming…') : '';
}

async function loadQr(fromEvent = false) {
  const g = gen;
  try {
    const q = await api('GET', `/whatsapp/${tid}/qr`);
    if (g !== gen) return;
    if (fromEvent) qrCount = qrCount === null ? 2 : qrCount + 1;
    if (q.dataUrl) {
      const since = fromEvent || !status ? null : status.since;
      qrDeadline = Date.now() + qrSecondsLeft({ nth: qrCount, since }) * 1000;
    }
    showQr(q.dataUrl);
    countdown();
  } catch (e) {
    if (g === gen) onError(e);
  }
}

async function refresh() {
  const g = gen;
  try {
    const st = await api('GET', `/whatsapp/${tid}/status`);
    if (g === gen) applyStatus(st);
  } catch (e) {
    if (g !== gen) return;
    if (e instanceof ApiError && e.code === 'unknown_tenant') applyStatus(null);
    else onError(e);
  }
}

function stateEvent(d) {
  const code = reasonCode(d.reason);
  addEvent(`${d.from} → ${d.state}${d.reason ? ` · ${code ? `${code} ` : ''}${d.reason}` : ''}`, d.at);
  if (d.state === 'qr' && d.from !== 'qr') qrCount = 0;
  refresh();
}

async function openEvents() {
  const g = gen;
  let tok;
  try {
    tok = await api('POST', `/whatsapp/${tid}/events-token`);
  } catch (e) {
    if (g === gen) onError(e);
    return;
  }
  if (g !== gen) return;
  es = new EventSource(url(tok.url));
  es.addEventListener('open', () => { $('live').textContent = 'live'; });
  es.addEventListener('snapshot', (e) => { applyStatus(JSON.parse(e.data).status); });
  es.addEventListener('state', (e) => stateEvent(JSON.parse(e.data)));
  es.addEventListener('qr', (e) => { addEvent('new QR', JSON.parse(e.data).at); loadQr(true); });
  es.addEventListener('reset', () => refresh());
  es.addEventListener('error', () => {
    $('live').textContent = 'reconnecting…';
    // EventSource retries by itself; a refused reconnect (expired token, daemon restarted with another secret)
    // closes it. Either way ask the API what is going on: unreachable or 401 switch screens, else reopen.
    api('GET', '/whatsapp').then(() => {
      if (g === gen && es && es.readyState === EventSource.CLOSED) { closeEvents(); openEvents(); }
    }, (err) => { if (g === gen) onError(err); });
  });
}

function closeEvents() {
  if (es) es.close();
  es = null;
  $('live').textContent = '';
}

async function act(action) {
  const g = gen;
  const buttons = document.querySelectorAll('#screen-tenant [data-action]');
  buttons.forEach((b) => { b.disabled = true; });
  setMsg(`${action}…`);
  try {
    const st = await api('POST', `/whatsapp/${tid}/${action}`);
    if (g !== gen) return;
    setMsg(`${action}: sent at ${clock()}`);
    applyStatus(st);
  } catch (e) {
    if (g !== gen) return;
    if (e instanceof ApiError) setMsg(`${action} failed: ${e.message} (${e.code})`, true);
    else onError(e);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

async function pairingCode(ev) {
  ev.preventDefault();
  const g = gen;
  $('pair-code').textContent = 'asking…';
  try {
    const r = await api('POST', `/whatsapp/${tid}/pairing-code`, { phone: $('pair-phone').value });
    if (g !== gen) return;
    $('pair-code').replaceChildren('Type this code on that phone (Linked devices → Link with phone number): ',
      el('strong', {}, `${r.code.slice(0, 4)}-${r.code.slice(4)}`));
  } catch (e) {
    if (g !== gen) return;
    if (e instanceof ApiError) $('pair-code').textContent = `No code: ${e.message}`;
    else onError(e);
  }
}

export function setupTenant(handleError) {
  onError = handleError;
  for (const b of document.querySelectorAll('#screen-tenant [data-action]')) {
    const action = b.dataset.action;
    b.addEventListener('click', () => {
      if (action !== 'logout') { act(action); return; }
      $('logout-id').textContent = tid;
      $('logout-dialog').returnValue = '';
      $('logout-dialog').showModal();
    });
  }
  $('logout-dialog').addEventListener('close', () => {
    if ($('logout-dialog').returnValue === 'confirm') act('logout');
  });
  $('pair-form').addEventListener('submit', pairingCode);
}

export function showTenant(id) {
  hideTenant();
  tid = id;
  status = null;
  qrCount = null;
  qrDeadline = 0;
  $('t-id').textContent = id;
  $('t-events').replaceChildren();
  $('pair-code').textContent = '';
  setMsg('');
  showQr(null);
  tick = setInterval(countdown, 1000);
  refresh();
  openEvents();
}

export function hideTenant() {
  gen += 1;
  clearInterval(tick);
  closeEvents();
}
