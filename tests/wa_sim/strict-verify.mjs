// TEST-ONLY preload emulating a fixed Baileys: Curve.verify honours libsignal's boolean.
// In rc14 it returns true for ANY 64-byte signature (PROTOCOL.md §3.1), which would make the
// wrong-root test meaningless. The worker gets its own fix; tests apply this one in-process.
import { createRequire } from 'node:module';
import path from 'node:path';
import { resolveBaileysLib, libUrl } from './resolve-baileys.mjs';

const lib = resolveBaileysLib();
const crypto = await import(libUrl(lib, 'Utils/crypto.js'));
const curve = createRequire(path.join(lib, 'index.js'))('libsignal/src/curve.js');
if (!crypto.Curve.__strict) {
  crypto.Curve.verify = (pubKey, message, signature) => {
    try {
      return curve.verifySignature(crypto.generateSignalPubKey(pubKey), message, signature) === true;
    } catch {
      return false;
    }
  };
  crypto.Curve.__strict = true;
}
export const strictCurve = crypto.Curve;
