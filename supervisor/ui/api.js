// The daemon's API as the console uses it: the secret from this tab's sessionStorage as X-Internal-Secret (no
// cookies, so no CSRF), JSON bodies with their Content-Type, and three kinds of failure the screens tell apart.

const KEY = 'baileys-supervisor.secret';
// API paths resolve against the page's parent (/ui/ -> /), so the console also works behind a path prefix.
export const BASE = new URL('../', location.href);
export const TENANT_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

export class Unauthorized extends Error {}
export class Unreachable extends Error {}
export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

export const auth = { off: false };
export const getSecret = () => sessionStorage.getItem(KEY) || '';
export const setSecret = (s) => (s ? sessionStorage.setItem(KEY, s) : sessionStorage.removeItem(KEY));
export const url = (path) => new URL(path.replace(/^\//, ''), BASE).href;

export async function api(method, path, body, { withSecret = true } = {}) {
  const headers = { Accept: 'application/json' };
  const secret = getSecret();
  if (withSecret && secret) headers['X-Internal-Secret'] = secret;
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body || {});
  }
  let r;
  try {
    r = await fetch(url(path), init);
  } catch (e) {
    throw new Unreachable(e && e.message ? e.message : 'network error');
  }
  let data = null;
  try { data = await r.json(); } catch { /* not JSON: a proxy's error page */ }
  if (r.status === 401) throw new Unauthorized(data && data.message);
  if (r.ok && data !== null) return data;
  if (data && data.error && !(r.status === 503 && data.error === 'shutting_down')) {
    throw new ApiError(r.status, data.error, data.message || data.error);
  }
  throw new Unreachable(data && data.message ? data.message : `HTTP ${r.status}`);
}

// Whether the daemon asks for a secret at all: GET /whatsapp without one answers 200 only when auth is off.
export async function probeAuth() {
  try {
    await api('GET', '/whatsapp', null, { withSecret: false });
    auth.off = true;
  } catch (e) {
    if (!(e instanceof Unauthorized)) throw e;
    auth.off = false;
  }
  return auth.off;
}
