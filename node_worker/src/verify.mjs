// Closes the server-verification hole of Baileys 7.0.0-rc14 without forking it.
//
// lib/Utils/crypto.js exports `Curve` with
//     verify: (pubKey, message, signature) => { try { curve.verifySignature(...); return true } catch { return false } }
// but libsignal's verifySignature *returns* false for a wrong signature (it only throws for malformed
// input), so every well-formed 64-byte signature "verifies". Both the Noise certificate chain check
// (lib/Utils/noise-handler.js, processHandshake) and the ADV account-signature check of pair-success
// (lib/Utils/validate-connection.js, configureSuccessfulPairing) call `Curve.verify(...)` as a property
// lookup at call time on that same exported object (`import { Curve } from './crypto.js'`). The package
// has no `exports` map, so `import('@whiskeysockets/baileys')` from the worker and Baileys' internal
// './crypto.js' are the same file URL and therefore the same module instance: replacing the `verify`
// property on the object we import fixes every internal caller.
//
// The patched verify still reads the root key from WA_CERT_DETAILS at call time (Baileys passes it as an
// argument), so a test-only `--import` preload that swaps WA_CERT_DETAILS.PUBLIC_KEY for a simulator's
// root keeps working; nothing here can turn verification off.
import { createRequire } from 'node:module';

const PATCHED = Symbol.for('baileys-supervisor.verifyPatched');

/** libsignal's curve module, resolved from Baileys' own location (the copy Baileys itself uses). */
export function loadLibsignalCurve(baileysEntryUrl) {
  const req = createRequire(baileysEntryUrl);
  return req('libsignal/src/curve.js');
}

function toBuffer(x) {
  if (Buffer.isBuffer(x)) return x;
  if (x instanceof Uint8Array) return Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  return null;
}

/**
 * A verify that honours the boolean: true only when libsignal says the signature is valid.
 * Malformed input (wrong key length, missing message, signature not 64 bytes) is false, never a throw.
 * `isInit` is never passed: libsignal's verifySignature returns true unconditionally when it is set.
 */
export function makeStrictVerify(libsignalCurve, onReject = () => {}) {
  return function strictVerify(pubKey, message, signature) {
    let ok = false;
    try {
      let key = toBuffer(pubKey);
      const msg = toBuffer(message);
      const sig = toBuffer(signature);
      if (key && msg && sig && sig.length === 64) {
        // Same normalisation as Baileys' generateSignalPubKey: 32-byte keys get the 0x05 type byte.
        if (key.length === 32) key = Buffer.concat([Buffer.from([5]), key]);
        ok = libsignalCurve.verifySignature(key, msg, sig) === true;
      }
    } catch {
      ok = false;
    }
    if (!ok) onReject();
    return ok;
  };
}

/**
 * Install the strict verify on Baileys' Curve object and prove it works before any socket exists:
 * a right signature must pass and a wrong one must fail, otherwise throw (the worker fails closed).
 * `onReject` is called for every rejected signature so the worker can name the cause of the close
 * (`server_verification_failed`) independently of Baileys' error texts.
 */
export function installVerifyPatch(Curve, libsignalCurve, { onReject = () => {} } = {}) {
  if (!Curve || typeof Curve.verify !== 'function' || typeof Curve.sign !== 'function') {
    throw new Error('Baileys Curve object not found: cannot install signature verification');
  }
  let inSelfTest = false;
  const strict = makeStrictVerify(libsignalCurve, () => { if (!inSelfTest) onReject(); });
  strict[PATCHED] = true;
  Curve.verify = strict;
  inSelfTest = true;
  try {
    selfTest(Curve);
  } finally {
    inSelfTest = false;
  }
  return strict;
}

export function isPatched(Curve) {
  return Boolean(Curve?.verify?.[PATCHED]);
}

/** Throws unless Curve.verify accepts a genuine signature and rejects forged/tampered ones. */
export function selfTest(Curve) {
  const kp = Curve.generateKeyPair();
  const msg = Buffer.from('baileys-supervisor verify self-test');
  const sig = Curve.sign(kp.private, msg);
  const forged = Buffer.alloc(64, 7);
  const tampered = Buffer.from(msg);
  tampered[0] ^= 1;
  if (Curve.verify(kp.public, msg, sig) !== true) throw new Error('verify self-test: a valid signature was rejected');
  if (Curve.verify(kp.public, msg, forged) !== false) throw new Error('verify self-test: a forged signature was accepted');
  if (Curve.verify(kp.public, tampered, sig) !== false) throw new Error('verify self-test: a signature over other data was accepted');
}
