// TEST-ONLY preload: make a Baileys client trust the simulator's test root instead of
// WhatsApp's real root. Use as `node --import ./tests/wa_sim/trust-test-root.mjs worker.mjs`
// or NODE_OPTIONS=--import=/abs/path/trust-test-root.mjs. Never load it in production.
// WA_SIM_ROOT_PUB=<hex> overrides the key (default: keys/test-root.json's public half).
import fs from 'node:fs';
import { resolveBaileysLib, libUrl } from './resolve-baileys.mjs';

const pubHex = process.env.WA_SIM_ROOT_PUB ||
  JSON.parse(fs.readFileSync(new URL('./keys/test-root.json', import.meta.url), 'utf8')).public;
const lib = resolveBaileysLib();
const defaults = await import(libUrl(lib, 'Defaults/index.js'));
// WA_CERT_DETAILS is a const binding but a mutable object: the noise handler reads
// WA_CERT_DETAILS.PUBLIC_KEY at handshake time, so replacing the property is enough.
defaults.WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(pubHex, 'hex');
if (process.env.WA_SIM_DEBUG) process.stderr.write(`[trust-test-root] root ${pubHex} trusted in ${lib}\n`);
export const trustedRoot = pubHex;
export const baileysLib = lib;
