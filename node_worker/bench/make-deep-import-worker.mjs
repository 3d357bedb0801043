// Writes bench/.worker-deep-import.mjs: a copy of src/worker.mjs that imports only the Baileys modules the worker
// uses (lib/Socket, Utils/crypto, Utils/generics, Defaults, Types) instead of the package index (which also
// loads lib/WAM, WAUSync, the Utils barrel...). Bench-only, to measure that change before proposing it.
// usage: node bench/make-deep-import-worker.mjs   (prints the path of the generated file)
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const src = fileURLToPath(new URL('../src/worker.mjs', import.meta.url));
const out = fileURLToPath(new URL('./.worker-deep-import.mjs', import.meta.url));
let text = readFileSync(src, 'utf8');
const from = "  w.baileys = await import('@whiskeysockets/baileys');\n";
const to = `  const lib = (p) => import(new URL(p, baileysEntry)); // baileysEntry = .../baileys/lib/index.js
  const [socketMod, cryptoMod, genericsMod, defaultsMod, typesMod] = await Promise.all([
    lib('./Socket/index.js'), lib('./Utils/crypto.js'), lib('./Utils/generics.js'), lib('./Defaults/index.js'),
    lib('./Types/index.js')]);
  w.baileys = { default: socketMod.default, Curve: cryptoMod.Curve, DEFAULT_CONNECTION_CONFIG: defaultsMod.DEFAULT_CONNECTION_CONFIG,
    fetchLatestWaWebVersion: genericsMod.fetchLatestWaWebVersion, DisconnectReason: typesMod.DisconnectReason };
`;
if (!text.includes(from)) throw new Error('src/worker.mjs changed: the Baileys import line was not found');
text = text.replace(from, to).replaceAll("from './", "from '../src/").replaceAll("import('./", "import('../src/");
writeFileSync(out, text);
console.log(out);
