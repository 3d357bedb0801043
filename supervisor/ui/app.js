// The console's shell: which screen shows (sign-in, daemon unreachable, tenants, one tenant), the hash route
// (#/ or #/t/<tenant>, so a reload or a shared link lands on the same view), and what each failure switches to.

import { TENANT_RE, Unauthorized, Unreachable, api, auth, getSecret, probeAuth, setSecret } from './api.js';
import { hideList, setupList, showList } from './list.js';
import { hideTenant, setupTenant, showTenant } from './tenant.js';
import { loadDoctor } from './texts.js';

const RETRY_MS = 3000;
const $ = (id) => document.getElementById(id);
let retryTimer = null;

function screen(name) {
  for (const s of document.querySelectorAll('.screen')) s.hidden = s.id !== `screen-${name}`;
  $('loading').hidden = true;
  $('signout').hidden = auth.off || !['list', 'tenant'].includes(name);
  $('auth-off').hidden = !auth.off;
  document.body.dataset.screen = name; // lets tests and styles know the screen without reading texts
}

function leaveViews() {
  hideList();
  hideTenant();
}

function signin(wrong) {
  leaveViews();
  screen('signin');
  $('signin-error').hidden = !wrong;
  $('secret').value = '';
  $('secret').focus();
}

function down(reason) {
  leaveViews();
  screen('down');
  $('down-text').textContent = `The daemon at ${location.host} does not answer (${reason}).`;
  clearTimeout(retryTimer);
  retryTimer = setTimeout(boot, RETRY_MS);
}

// Every view reports its failures here: a refused secret and an unreachable daemon get their own screen.
function handleError(e) {
  if (e instanceof Unauthorized) {
    setSecret('');
    signin(true);
  } else if (e instanceof Unreachable) {
    down(e.message);
  } else {
    console.error(e); // a bug of this page: the view keeps what it shows
  }
}

function route() {
  if (document.body.dataset.screen === 'signin' || document.body.dataset.screen === 'down') return;
  leaveViews();
  const m = location.hash.match(/^#\/t\/(.+)$/);
  const tid = m && decodeURIComponent(m[1]);
  if (tid && TENANT_RE.test(tid)) {
    screen('tenant');
    showTenant(tid);
  } else {
    screen('list');
    showList();
  }
}

// Where the page starts, and where it comes back after the daemon was unreachable.
async function boot() {
  clearTimeout(retryTimer);
  try {
    if (!(await probeAuth()) && !getSecret()) { signin(false); return; }
    if (!auth.off) await api('GET', '/whatsapp'); // the stored secret is still the daemon's
  } catch (e) {
    if (e instanceof Unauthorized) { setSecret(''); signin(true); } else handleError(e);
    return;
  }
  document.body.dataset.screen = '';
  route();
}

function setup() {
  setupList(handleError);
  setupTenant(handleError);
  window.addEventListener('hashchange', route);
  $('signin-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    setSecret($('secret').value);
    boot();
  });
  $('signout').addEventListener('click', () => { setSecret(''); signin(false); });
  $('down-retry').addEventListener('click', boot);
  $('open-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    location.hash = `#/t/${$('open-id').value.trim()}`;
  });
  loadDoctor().then(boot);
}

setup();
