// The worker's log: pino JSON on stderr (stdout belongs to the protocol), resolved from Baileys' own dependency
// tree so the logger Baileys is given is the pino it was built against.
import { createRequire } from 'node:module';
import { format } from 'node:util';

const CONSOLE_LEVELS = [['log', 'info'], ['info', 'info'], ['debug', 'debug'], ['trace', 'trace'],
  ['warn', 'warn'], ['error', 'error']];

export function makeLogger(settings, baileysEntry) {
  const pino = createRequire(baileysEntry)('pino');
  // sync: a log line written just before process.exit() must not be lost.
  const logger = pino({ level: settings.logLevel, base: { pid: process.pid, tenant: settings.tenant } },
    pino.destination({ dest: 2, sync: true }));
  // libsignal and friends call console.log/info (e.g. "Closing session"): route every console method to the JSON
  // log so no stray text reaches the daemon's protocol reader.
  for (const [method, level] of CONSOLE_LEVELS) {
    console[method] = (...args) => logger[level]({ src: 'console' }, format(...args));
  }
  return logger;
}
