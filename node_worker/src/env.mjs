// Settings from the environment the daemon sets (`BSUP_*`, docs/protocol.md; the names are listed in
// supervisor/protocol.json). Throws EnvError, after which the worker writes one `error` and exits 2.
import { isAbsolute } from 'node:path';
import { fstatSync } from 'node:fs';
import { PROTOCOL_VERSION } from './protocol.mjs';

export const SOCKET_OPTION_KEYS = ['connectTimeoutMs', 'keepAliveIntervalMs', 'defaultQueryTimeoutMs', 'qrTimeout'];
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
export const DEFAULT_BROWSER = ['AgentLocator', 'Chrome', '10.0'];

export class EnvError extends Error {
  constructor(variable, message) {
    super(`${variable}: ${message}`);
    this.variable = variable;
    this.code = 'bad_env';
  }
}

function parseJsonVar(env, name) {
  try {
    return JSON.parse(env[name]);
  } catch (err) {
    throw new EnvError(name, `not valid JSON (${err.message})`);
  }
}

function parsePositiveInt(env, name, dflt, { min = 1, max = 24 * 3600 * 1000 } = {}) {
  const raw = env[name];
  if (raw === undefined || raw === '') return dflt;
  if (!/^\d+$/.test(raw)) throw new EnvError(name, `expected an integer, got ${JSON.stringify(raw)}`);
  const n = Number(raw);
  if (n < min || n > max) throw new EnvError(name, `must be between ${min} and ${max}`);
  return n;
}

/**
 * Version policy: 'bundled' | 'latest' | explicit [2, 3000, N].
 * Returns {policy: 'bundled'|'latest'|'explicit', version?: number[]}.
 */
export function parseVersionPolicy(raw) {
  if (raw === undefined || raw === '' || raw === 'bundled') return { policy: 'bundled' };
  if (raw === 'latest') return { policy: 'latest' };
  const m = /^(\d+)\.(\d+)\.(\d+)$/.exec(raw);
  if (!m) throw new EnvError('BSUP_VERSION_POLICY', `expected bundled, latest or A.B.C, got ${JSON.stringify(raw)}`);
  const version = m.slice(1).map(Number);
  if (!version.every(Number.isSafeInteger)) throw new EnvError('BSUP_VERSION_POLICY', 'version parts too large');
  return { policy: 'explicit', version };
}

export function parseSocketOptions(raw) {
  if (raw === undefined || raw === '') return {};
  const obj = parseJsonVar({ BSUP_SOCKET_OPTIONS: raw }, 'BSUP_SOCKET_OPTIONS');
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new EnvError('BSUP_SOCKET_OPTIONS', 'must be a JSON object');
  }
  const out = {};
  for (const [k, v] of Object.entries(obj)) {
    // A whitelist, not a pass-through: anything else (auth, logger, waWebSocketUrl...) is owned by the worker.
    if (!SOCKET_OPTION_KEYS.includes(k)) {
      throw new EnvError('BSUP_SOCKET_OPTIONS', `unknown key ${JSON.stringify(k)} (allowed: ${SOCKET_OPTION_KEYS.join(', ')})`);
    }
    if (!Number.isInteger(v) || v <= 0 || v > 24 * 3600 * 1000) {
      throw new EnvError('BSUP_SOCKET_OPTIONS', `${k} must be a positive integer of milliseconds`);
    }
    out[k] = v;
  }
  return out;
}

/** BSUP_STANDBY=1: start up to `hello`, then wait for the `go` command before touching auth or the network. */
export function parseStandby(raw) {
  if (raw === undefined || raw === '' || raw === '0') return false;
  if (raw === '1') return true;
  throw new EnvError('BSUP_STANDBY', `expected 0 or 1, got ${JSON.stringify(raw)}`);
}

/** A 0/1 variable; absent = false. */
function parseFlag(env, name) {
  const raw = env[name];
  if (raw === undefined || raw === '' || raw === '0') return false;
  if (raw === '1') return true;
  throw new EnvError(name, `expected 0 or 1, got ${JSON.stringify(raw)}`);
}

/** Parse and validate every BSUP_* variable. Throws EnvError (the worker then exits 2). */
export function parseEnv(env = process.env, { checkFd = true } = {}) {
  const tenant = env.BSUP_TENANT;
  if (!tenant) throw new EnvError('BSUP_TENANT', 'missing');
  const authDir = env.BSUP_AUTH_DIR;
  if (!authDir) throw new EnvError('BSUP_AUTH_DIR', 'missing');
  if (!isAbsolute(authDir)) throw new EnvError('BSUP_AUTH_DIR', 'must be an absolute path');

  let protocol = PROTOCOL_VERSION;
  if (env.BSUP_PROTOCOL !== undefined && env.BSUP_PROTOCOL !== '') {
    if (!/^\d+$/.test(env.BSUP_PROTOCOL)) throw new EnvError('BSUP_PROTOCOL', 'expected an integer');
    // A different number is not an error here: hello reports what we speak and the daemon decides
    // (protocol_mismatch), so that decision stays in one place.
    protocol = Number(env.BSUP_PROTOCOL);
  }

  let lockFd = null;
  if (env.BSUP_LOCK_FD !== undefined && env.BSUP_LOCK_FD !== '') {
    if (!/^\d+$/.test(env.BSUP_LOCK_FD)) throw new EnvError('BSUP_LOCK_FD', 'expected a descriptor number');
    lockFd = Number(env.BSUP_LOCK_FD);
    if (lockFd < 3) throw new EnvError('BSUP_LOCK_FD', 'must not be stdin/stdout/stderr');
    if (checkFd) {
      // If the daemon says we inherit a lock but the fd is not open, the tenant is not actually
      // locked by us: refusing to run is the only way to keep "exactly one worker per tenant".
      try { fstatSync(lockFd); } catch { throw new EnvError('BSUP_LOCK_FD', `descriptor ${lockFd} is not open`); }
    }
  }

  let waUrl = null;
  if (env.BSUP_WA_URL) {
    let u;
    try { u = new URL(env.BSUP_WA_URL); } catch { throw new EnvError('BSUP_WA_URL', 'not a URL'); }
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new EnvError('BSUP_WA_URL', 'must be ws:// or wss://');
    waUrl = env.BSUP_WA_URL;
  }

  let browser = DEFAULT_BROWSER;
  if (env.BSUP_BROWSER) {
    browser = parseJsonVar(env, 'BSUP_BROWSER');
    if (!Array.isArray(browser) || browser.length !== 3 || !browser.every((s) => typeof s === 'string' && s.length > 0)) {
      throw new EnvError('BSUP_BROWSER', 'must be a JSON array of 3 non-empty strings');
    }
  }

  const logLevel = env.BSUP_LOG_LEVEL || 'warn';
  if (!LOG_LEVELS.includes(logLevel)) throw new EnvError('BSUP_LOG_LEVEL', `must be one of ${LOG_LEVELS.join(', ')}`);

  return {
    protocol,
    tenant,
    authDir,
    lockFd,
    waUrl,
    browser,
    version: parseVersionPolicy(env.BSUP_VERSION_POLICY),
    logLevel,
    heartbeatMs: parsePositiveInt(env, 'BSUP_HEARTBEAT_MS', 5000, { min: 50 }),
    socketOptions: parseSocketOptions(env.BSUP_SOCKET_OPTIONS),
    standby: parseStandby(env.BSUP_STANDBY),
    stateSync: parseFlag(env, 'BSUP_STATE_SYNC'), // cluster mode: auth writes through the daemon (state-sync.mjs)
  };
}
