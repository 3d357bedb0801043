// Find the Baileys copy the *running program* uses, so a preload patches that module instance
// (PROTOCOL.md §3.2). Baileys has no `exports` map, so lib/Defaults/index.js resolved from the same
// package dir is the very file URL Baileys' own `../Defaults/index.js` import loads.
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export function resolveBaileysLib() {
  const candidates = [];
  // 1. the program's entry point (e.g. node_worker/worker.mjs) — what a worker really loads
  if (process.argv[1]) candidates.push(process.argv[1]);
  // 2. the project's only copy, for programs outside node_worker (smoke driver, node --test)
  candidates.push(new URL('../../node_worker/package.json', import.meta.url).pathname);
  for (const from of candidates) {
    try {
      return path.dirname(createRequire(path.resolve(from)).resolve('@whiskeysockets/baileys'));
    } catch { /* try the next one */ }
  }
  throw new Error('cannot resolve @whiskeysockets/baileys from ' + candidates.join(' or '));
}

export const libUrl = (lib, rel) => pathToFileURL(path.join(lib, rel)).href;
