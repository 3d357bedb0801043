// The tenants table: GET /whatsapp every few seconds (an EventSource cannot send the secret that GET /events
// needs, and one events-token per tenant would be one stream per row), filtered and sorted in the page.

import { api } from './api.js';
import { ago, closeText, el, stateBadge } from './texts.js';

const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);
let timer = null;
let rows = [];
let sort = { key: 'tenant', dir: 1 };
let onError = () => {};

const keyOf = {
  tenant: (s) => s.tenant,
  state: (s) => s.state,
  since: (s) => s.since || '',
  close: (s) => (s.lastDisconnect ? s.lastDisconnect.code ?? 0 : -1),
  pid: (s) => s.pid ?? -1,
  restarts: (s) => s.restarts ?? 0,
  standby: (s) => s.standbyPid ?? -1,
};

function cmp(a, b) {
  const x = keyOf[sort.key](a);
  const y = keyOf[sort.key](b);
  const r = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
  return r * sort.dir || a.tenant.localeCompare(b.tenant, undefined, { numeric: true });
}

function closeCell(s) {
  const c = closeText(s.lastDisconnect, s.tenant);
  if (!c) return el('td', { 'data-label': 'Last disconnect' }, '—');
  return el('td', { 'data-label': 'Last disconnect', class: 'close' },
    el('strong', {}, c.title), ' ', el('span', { class: 'muted' }, ago(s.lastDisconnect.at)),
    el('div', {}, c.meaning), c.fix ? el('div', { class: 'fix' }, 'Fix: ', c.fix) : null);
}

function render() {
  const q = $('filter').value.trim().toLowerCase();
  const shown = rows.filter((s) => !q || s.tenant.toLowerCase().includes(q) || s.state.includes(q)).sort(cmp);
  const body = $('tenants').tBodies[0];
  body.replaceChildren(...shown.map((s) => el('tr', { 'data-tenant': s.tenant },
    el('th', { scope: 'row', 'data-label': 'Tenant' }, el('a', { href: `#/t/${s.tenant}` }, s.tenant)),
    el('td', { 'data-label': 'State' }, stateBadge(s.state), s.stateReason ? el('div', { class: 'muted' }, s.stateReason) : null),
    el('td', { 'data-label': 'Since', title: s.since || '' }, ago(s.since)),
    closeCell(s),
    el('td', { 'data-label': 'Pid' }, s.pid ?? '—'),
    el('td', { 'data-label': 'Restarts' }, s.restarts ?? 0),
    el('td', { 'data-label': 'Standby' }, s.standbyPid ?? '—'))));
  $('empty').hidden = rows.length > 0;
  $('tenants').hidden = rows.length === 0;
  for (const th of $('tenants').tHead.rows[0].cells) {
    th.setAttribute('aria-sort', th.dataset.key === sort.key ? (sort.dir > 0 ? 'ascending' : 'descending') : 'none');
  }
}

// gen: a poll answered after the view was left (or re-entered) is dropped, so only one loop ever runs.
let gen = 0;

async function poll(g) {
  try {
    const data = await api('GET', '/whatsapp');
    if (g !== gen) return;
    rows = data.tenants || [];
    render();
    timer = setTimeout(() => poll(g), POLL_MS);
  } catch (e) {
    if (g === gen) onError(e);
  }
}

export function setupList(handleError) {
  onError = handleError;
  $('filter').addEventListener('input', render);
  for (const th of $('tenants').tHead.rows[0].cells) {
    th.querySelector('button').addEventListener('click', () => {
      sort = { key: th.dataset.key, dir: sort.key === th.dataset.key ? -sort.dir : 1 };
      render();
    });
  }
}

export function showList() {
  hideList();
  poll(gen);
}

export function hideList() {
  gen += 1;
  clearTimeout(timer);
}
