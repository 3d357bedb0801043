// The worker side of the line protocol (docs/protocol.md): command parsing, event checking and encoding, line
// splitting (environment parsing: env.mjs). Pure functions except `makeEmitter`, so tests need no Baileys and no
// socket.
// Names, fields, version and limits come from supervisor/protocol.json, the one description the daemon reads too
// (tests/test_protocol_contract.py checks both sides against it).
import { readFileSync } from 'node:fs';

export const DESCRIPTION_PATH = new URL('../../supervisor/protocol.json', import.meta.url);
export const DESCRIPTION = JSON.parse(readFileSync(DESCRIPTION_PATH, 'utf8'));
export const PROTOCOL_VERSION = DESCRIPTION.version;
/** The daemon drops stdout lines longer than this. */
export const MAX_LINE_BYTES = DESCRIPTION.maxLineBytes;
/** Commands are tiny; a longer stdin line is a bug on the other side, not something to buffer forever. */
export const MAX_COMMAND_BYTES = DESCRIPTION.maxCommandBytes;

export class CommandError extends Error {
  constructor(message, id = undefined) {
    super(message);
    this.code = 'bad_command';
    this.id = id;
  }
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
 * Encode one `message` event (one message per event, protocol v2: each carries its own `ref`). A message too large
 * for one line is replaced by an `error` event naming its key, so the daemon hears about it instead of silently
 * dropping an oversized line. Returns {line} or {error}.
 */
export function encodeMessageEvent({ upsertType, message, ref, recovered = false }, maxBytes = MAX_LINE_BYTES) {
  const line = JSON.stringify({ type: 'message', upsertType, messages: [message], ref, recovered, ts: Date.now() });
  if (Buffer.byteLength(line) + 1 <= maxBytes) return { line };
  return { error: { type: 'error', code: 'message_too_large', fatal: false,
    message: `message ${message?.key?.id ?? '?'} from ${message?.key?.remoteJid ?? '?'} is ${Buffer.byteLength(line)} bytes encoded; not forwarded` } };
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
