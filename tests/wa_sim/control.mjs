// HTTP/JSON control API for the simulator, loopback only. Every answer is JSON; failures are
// {ok:false, error:<code>, message} with a 4xx/5xx status, so pytest and curl can both check them.
import http from 'node:http';
import { SimError } from './errors.mjs';

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString() || '{}';
  try {
    return JSON.parse(text);
  } catch {
    throw new SimError('bad_json', 'request body is not JSON', 400);
  }
}

export function makeControlServer(sim) {
  const routes = {
    'GET /state': () => ({ ok: true, ...sim.state() }),
    'GET /events': (_b, url) => {
      const since = Number(url.searchParams.get('since') ?? 0);
      return { ok: true, events: sim.events.filter(e => e.seq > since) };
    },
    'POST /scan': (b) => sim.scan(b),
    'POST /enter-code': (b) => sim.linkCodes.enterCode(b), // the phone types a companion's link code
    'POST /kill': (b) => sim.kill(b),
    'POST /faults': (b) => ({ ok: true, pendingFaults: sim.faults.add(b) }),
    'DELETE /faults': () => ({ ok: true, pendingFaults: sim.faults.clear() }),
    // Messages (contacts.mjs, mailbox.mjs)
    'POST /contacts': (b) => ({ ok: true, ...sim.contacts.create(b).state() }),
    'GET /contacts': () => ({ ok: true, contacts: sim.contacts.state() }),
    'POST /contacts/send': (b) => sim.contacts.send(b),
    'GET /contacts/inbox': (_b, url) => sim.contacts.inbox(url.searchParams.get('contact')),
    'POST /contacts/receipt': (b) => sim.contacts.receipt(b),
    'POST /contacts/forget': (b) => sim.contacts.forget(b),
    'POST /receipts/drop': (b) => {
      const key = (b.jid ?? b.device) ? sim.devices.find(b).jid : '*';
      const count = b.count ?? 1;
      if (!Number.isInteger(count) || count < 1) throw new SimError('bad_request', 'count must be an integer >= 1', 400);
      return { ok: true, dropNext: sim.mailbox.dropReceipts(key, count) };
    },
    'POST /sends/reject': (b) => ({ ok: true, rejectNext: sim.contacts.rejectSends(b) }),
    'GET /mailbox': () => ({ ok: true, held: sim.mailbox.held, devices: Object.fromEntries(
      Object.entries(sim.devices.state()).map(([jid, d]) => [jid, { queue: d.queue, stats: d.stats }])) }),
    'POST /offline/hold': () => ({ ok: true, ...sim.mailbox.hold() }),
    'POST /offline/release': () => ({ ok: true, ...sim.mailbox.release() }),
    'GET /config': () => ({ ok: true, config: sim.config }),
    'POST /config': (b) => ({ ok: true, config: sim.configure(b) }),
    // Back to a fresh simulator: no devices, counters, faults or connections, CLI config,
    // then the body (if any) applied as config.
    'POST /reset': (b) => { sim.reset(); sim.config = { ...sim.startConfig }; return { ok: true, config: sim.configure(b) }; }
  };
  return http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const handler = routes[`${req.method} ${url.pathname}`];
    let status = 200;
    let body;
    try {
      if (!handler) throw new SimError('not_found', `no route ${req.method} ${url.pathname}`, 404);
      const input = req.method === 'POST' ? await readJson(req) : {};
      body = await handler(input, url);
    } catch (err) {
      status = err instanceof SimError ? err.status : 500;
      body = { ok: false, error: err.code ?? 'internal', message: String(err.message ?? err), ...(err.extra ?? {}) };
    }
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body) + '\n');
  });
}
