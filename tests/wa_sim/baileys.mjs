// Single place that resolves the ONE Baileys copy the project ships (node_worker/node_modules),
// so the simulator, the preloads and the tests never load a second copy.
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const workerRequire = createRequire(new URL('../../node_worker/package.json', import.meta.url));

/** Absolute path of Baileys' lib/index.js inside node_worker/node_modules. */
export const baileysEntry = workerRequire.resolve('@whiskeysockets/baileys');
/** Baileys' lib/ directory (deep imports such as Defaults/index.js are resolved against it). */
export const baileysLib = path.dirname(baileysEntry);

export const B = await import(pathToFileURL(baileysEntry).href);

// libsignal as Baileys itself resolves it (same CJS module instance as Baileys' Utils/crypto.js).
const baileysRequire = createRequire(baileysEntry);
export const libsignalCurve = baileysRequire('libsignal/src/curve.js');
export const libsignal = baileysRequire('libsignal');
/** The `ws` package from node_worker (a Baileys dependency), used for the server side. */
export const ws = workerRequire('ws');

/**
 * A signature check that really checks. Baileys rc14's Curve.verify returns true for any
 * well-formed 64-byte signature (it ignores libsignal's boolean), so the simulator never
 * relies on it: everything it signs or receives is checked with this instead.
 */
export function realVerify(pub32, message, signature) {
  try {
    return libsignalCurve.verifySignature(B.generateSignalPubKey(pub32), message, signature) === true;
  } catch {
    return false;
  }
}
