// The worker side of the line protocol (docs/protocol.md): environment parsing, command parsing, event
// encoding. Pure functions except `makeEmitter`, so tests need no Baileys and no socket.
// Names, fields, version and limits come from supervisor/protocol.json, the one description the daemon reads too
// (tests/test_protocol_contract.py checks both sides against it).
import { isAbsolute } from 'node:path';
import { fstatSync, readFileSync } from 'node:fs';

export const DESCRIPTION_PATH = new URL('../../supervisor/protocol.json', import.meta.url);
export const DESCRIPTION = JSON.parse(readFileSync(DESCRIPTION_PATH, 'utf8'));
export const PROTOCOL_VERSION = DESCRIPTION.version;
/** The daemon drops stdout lines longer than this. */
export const MAX_LINE_BYTES = DESCRIPTION.maxLineBytes;
/** Commands are tiny; a longer stdin line is a bug on the other side, not something to buffer forever. */
export const MAX_COMMAND_BYTES = DESCRIPTION.maxCommandBytes;

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

export class CommandError extends Error {
  constructor(message, id = undefined) {
    super(message);
    this.code = 'bad_command';
    this.id = id;
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
  };
}

export const COMMANDS = Object.keys(DESCRIPTION.commands);

const TYPE_CHECKS = {
  int: Number.isInteger,
  number: (v) => typeof v === 'number' && Number.isFinite(v),
  string: (v) => typeof v === 'string',
  bool: (v) => typeof v === 'boolean',
  object: (v) => v !== null && typeof v === 'object' && !Array.isArray(v),
  array: Array.isArray,
  null: (v) => v === null,
};
const typeOk = (spec, v) => [spec.type].flat().some((t) => TYPE_CHECKS[t](v));

/** Why `value` does not fit the field `spec` of the description (type, pattern, length), or null when it does. */
function fieldProblem(name, spec, value) {
  if (!typeOk(spec, value)) return `${name} must be ${[spec.type].flat().join(' or ')}`;
  if (typeof value !== 'string') return null;
  if (spec.pattern && !new RegExp(spec.pattern).test(value)) return `${name} must be ${spec.expected ?? spec.pattern}`;
  if (value.length < (spec.minLength ?? 0) || value.length > (spec.maxLength ?? Infinity)) {
    return `${name} must be ${spec.minLength ?? 0}-${spec.maxLength} characters`;
  }
  return null;
}

/** Parse one stdin line into a command object. Throws CommandError (carrying the id when readable). */
export function parseCommand(line) {
  if (Buffer.byteLength(line) > MAX_COMMAND_BYTES) throw new CommandError('command line too long');
  let obj;
  try {
    obj = JSON.parse(line);
  } catch {
    throw new CommandError('not valid JSON');
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new CommandError('command must be a JSON object');
  let id;
  if (obj.id !== undefined) {
    if (fieldProblem('id', DESCRIPTION.commandId, obj.id)) throw new CommandError('id must be a non-empty string');
    id = obj.id;
  }
  if (typeof obj.cmd !== 'string') throw new CommandError('missing cmd', id);
  if (!Object.hasOwn(DESCRIPTION.commands, obj.cmd)) {
    throw new CommandError(`unknown cmd ${JSON.stringify(obj.cmd.slice(0, 50))}`, id);
  }
  const cmd = { cmd: obj.cmd, id };
  for (const [name, spec] of Object.entries(DESCRIPTION.commands[obj.cmd])) {
    if (obj[name] === undefined) {
      if (spec.required) throw new CommandError(`${name} is required`, id);
      continue;
    }
    const problem = fieldProblem(name, spec, obj[name]);
    if (problem) throw new CommandError(problem, id);
    cmd[name] = obj[name];
  }
  return cmd;
}

/** What is wrong with an event this worker is about to write, by the description ([] = nothing). Strict: a field
 *  the description does not list is a problem too (the daemon would keep it, but nobody would read it). */
export function checkEvent(event) {
  const fields = DESCRIPTION.events[event?.type];
  if (!fields) return [`unknown event type ${JSON.stringify(event?.type)}`];
  const specs = { ...DESCRIPTION.eventCommon, ...fields };
  const problems = [];
  for (const [name, spec] of Object.entries(specs)) {
    if (event[name] === undefined) {
      if (spec.required) problems.push(`${event.type}.${name} is required`);
    } else {
      const problem = fieldProblem(`${event.type}.${name}`, spec, event[name]);
      if (problem) problems.push(problem);
    }
  }
  for (const name of Object.keys(event)) {
    if (name !== 'type' && !(name in specs)) problems.push(`${event.type}.${name} is not in the description`);
  }
  return problems;
}

/**
 * Splits a byte stream into lines; calls onLine(str) per complete line and onTooLong() once per
 * oversized line (its bytes are discarded up to the next newline instead of buffered).
 */
export function makeLineSplitter(onLine, onTooLong, maxBytes = MAX_COMMAND_BYTES) {
  let parts = [];
  let size = 0;
  let discarding = false;
  return (chunk) => {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(10, start);
      const piece = chunk.subarray(start, nl === -1 ? chunk.length : nl);
      if (!discarding) {
        if (size + piece.length > maxBytes) {
          discarding = true;
          parts = [];
          size = 0;
          onTooLong();
        } else if (piece.length) {
          parts.push(piece);
          size += piece.length;
        }
      }
      if (nl === -1) return;
      if (!discarding) {
        const line = Buffer.concat(parts).toString('utf8').replace(/\r$/, '');
        if (line.trim()) onLine(line);
      }
      parts = [];
      size = 0;
      discarding = false;
      start = nl + 1;
    }
  };
}

/**
 * Encode a `message` event, splitting `messages` over several lines so no line exceeds the daemon's
 * limit. A single message that alone is too large is replaced by an `error` event naming its key, so
 * the daemon hears about it instead of silently dropping an oversized line.
 */
export function encodeMessageEvents(upsertType, safeMessages, maxBytes = MAX_LINE_BYTES) {
  const lines = [];
  const errors = [];
  let batch = [];
  const encode = (msgs) => JSON.stringify({ type: 'message', upsertType, messages: msgs });
  for (const m of safeMessages) {
    const single = encode([m]);
    if (Buffer.byteLength(single) + 1 > maxBytes) {
      errors.push({ type: 'error', code: 'message_too_large', fatal: false,
        message: `message ${m?.key?.id ?? '?'} from ${m?.key?.remoteJid ?? '?'} is ${Buffer.byteLength(single)} bytes encoded; not forwarded` });
      continue;
    }
    const candidate = encode([...batch, m]);
    if (Buffer.byteLength(candidate) + 1 > maxBytes) {
      lines.push(encode(batch));
      batch = [m];
    } else {
      batch.push(m);
    }
  }
  if (batch.length) lines.push(encode(batch));
  return { lines, errors };
}

/**
 * Milliseconds until this worker's next heartbeat: the next multiple of `ms` on the wall clock, not `ms` after its own
 * start. Every worker of a daemon then writes its heartbeat at the same moment and the daemon's event loop wakes up
 * once for all of them instead of once per worker (200 workers at 5 s: ~36 wake-ups/s -> ~5, daemon idle CPU
 * ~0.6 % -> ~0.1 % of a core; bench/daemon_idle.py). A timer that fires just short of a boundary (timers run on the
 * monotonic clock) skips it rather than sending two heartbeats in a row: consecutive ones stay <= 1.1 x ms apart.
 */
export function nextHeartbeatDelay(ms, now = Date.now()) {
  const delay = ms - (now % ms);
  return delay < ms / 10 ? delay + ms : delay;
}

/**
 * Event writer for stdout. stdout is a pipe to the daemon; on Linux Node writes pipes synchronously,
 * so a line written before process.exit() is not lost. Write errors (EPIPE once the daemon is gone)
 * are reported to onBroken instead of crashing the worker.
 */
export function makeEmitter(stream, { onBroken = () => {}, now = Date.now } = {}) {
  let broken = false;
  stream.on?.('error', (err) => {
    if (!broken) { broken = true; onBroken(err); }
  });
  const writeLine = (line) => {
    if (broken) return false;
    try {
      stream.write(line + '\n');
      return true;
    } catch (err) {
      broken = true;
      onBroken(err);
      return false;
    }
  };
  const emit = (event) => writeLine(JSON.stringify({ ...event, ts: now() }));
  return { emit, writeLine, get broken() { return broken; } };
}
