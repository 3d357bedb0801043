// JSON-safe encoding of Baileys objects for the line protocol (docs/protocol.md, `message` event).
//
// Baileys hands out protobuf message instances that contain Buffers/Uint8Arrays (keys, media hashes,
// thumbnails) and protobufjs `Long`s (timestamps, file lengths). Plain JSON.stringify would turn a
// Buffer into {"type":"Buffer","data":[...]} (5x larger, ambiguous) and a Long into {low,high,unsigned}.
// The protocol fixes one encoding instead:
//   - Buffer / Uint8Array / other typed arrays / ArrayBuffer -> {"$b64": "<standard base64>"}
//   - Long / BigInt -> number when it is a safe integer, else its decimal string
//   - undefined, functions and symbols are dropped (as JSON does); cycles become null
//   - Map -> object, Set -> array, Date -> ISO string
// We do not use protobufjs' toJSON: it turns bytes into bare base64 strings that the daemon could not
// tell apart from text fields.

const TWO_32 = 4294967296;

/** protobufjs/long.js Long, recognised by shape so we need not import the `long` package. */
export function isLong(v) {
  return v !== null && typeof v === 'object' &&
    typeof v.low === 'number' && typeof v.high === 'number' && typeof v.unsigned === 'boolean';
}

export function longToJson(v) {
  const high = v.unsigned ? v.high >>> 0 : v.high | 0;
  const n = high * TWO_32 + (v.low >>> 0);
  if (Number.isSafeInteger(n)) return n;
  // Outside 2^53: exact decimal via BigInt (the float above would have lost the low bits).
  return ((BigInt(high) << 32n) + BigInt(v.low >>> 0)).toString();
}

function bytesToB64(u8) {
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength).toString('base64');
}

export function toJsonSafe(value, seen = new WeakSet()) {
  if (value === null) return null;
  switch (typeof value) {
    case 'string': case 'boolean': return value;
    case 'number': return Number.isFinite(value) ? value : null;
    case 'bigint': {
      const n = Number(value);
      return Number.isSafeInteger(n) ? n : value.toString();
    }
    case 'undefined': case 'function': case 'symbol': return undefined;
    default: break;
  }
  if (ArrayBuffer.isView(value)) {
    // DataView and every typed array: encode the exact byte window, not the whole backing buffer
    // (Node pools small Buffers in one 8 KiB ArrayBuffer).
    return { $b64: bytesToB64(new Uint8Array(value.buffer, value.byteOffset, value.byteLength)) };
  }
  if (value instanceof ArrayBuffer) return { $b64: Buffer.from(value).toString('base64') };
  if (isLong(value)) return longToJson(value);
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.toISOString();
  if (seen.has(value)) return null;
  seen.add(value);
  try {
    if (Array.isArray(value) || value instanceof Set) {
      const out = [];
      for (const item of value) {
        const enc = toJsonSafe(item, seen);
        out.push(enc === undefined ? null : enc);
      }
      return out;
    }
    const out = {};
    const entries = value instanceof Map ? value.entries() : Object.entries(value);
    for (const [k, v] of entries) {
      const enc = toJsonSafe(v, seen);
      if (enc !== undefined) out[String(k)] = enc;
    }
    return out;
  } finally {
    // Only ancestors count as cycles; the same object appearing twice side by side is encoded twice.
    seen.delete(value);
  }
}

/** Inverse for tests and for daemon-side reference: turns {"$b64"} back into Buffers. */
export function fromJsonSafe(value) {
  if (Array.isArray(value)) return value.map(fromJsonSafe);
  if (value && typeof value === 'object') {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === '$b64' && typeof value.$b64 === 'string') {
      return Buffer.from(value.$b64, 'base64');
    }
    const out = {};
    for (const k of keys) out[k] = fromJsonSafe(value[k]);
    return out;
  }
  return value;
}
