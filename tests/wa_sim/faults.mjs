// Failure injection: faults queued for the next upgrades, and kills of live sessions in every way
// WhatsApp ends one (PROTOCOL.md §5 lists what Baileys reports for each).
import { SimError } from './errors.mjs';

export const KILL_VARIANTS = ['401', '440', '500', '503', '515', 'stream_end', 'tcp_drop', 'ws_close', 'silent', 'device_removed'];
export const FAULTS = ['refuse', 'stall_handshake', 'silent', 'tcp_drop_after_handshake', 'login_failure', 'stream_error'];

export class Faults {
  constructor(sim) {
    this.sim = sim;
    this.pending = []; // queue of { fault, remaining, ...params }
  }

  add({ fault, count = 1, ...params }) {
    if (!FAULTS.includes(fault)) throw new SimError('bad_fault', `fault must be one of ${FAULTS.join(', ')}`, 400);
    this.pending.push({ fault, remaining: count, ...params });
    return this.pending;
  }

  clear() {
    this.pending = [];
    return this.pending;
  }

  /** The fault for the upgrade being handled now (queue order), or null. */
  take() {
    const f = this.pending[0];
    if (!f) return null;
    if (--f.remaining <= 0) this.pending.shift();
    const applied = this.sim.counters.faultsApplied;
    applied[f.fault] = (applied[f.fault] ?? 0) + 1;
    return f;
  }

  kill({ device, jid, conn: connId, variant } = {}) {
    const { sim } = this;
    variant = String(variant ?? '');
    if (!KILL_VARIANTS.includes(variant)) throw new SimError('bad_variant', `variant must be one of ${KILL_VARIANTS.join(', ')}`, 400);
    let targets;
    let dev = null;
    if (connId != null) {
      const c = sim.conns.get(Number(connId));
      if (!c) throw new SimError('unknown_conn', `no live connection ${connId}`, 404);
      targets = [c];
      dev = c.jid ? sim.devices.get(c.jid) : null;
    } else {
      dev = sim.devices.find({ device, jid });
      targets = [...dev.live.values()];
      if (!targets.length) throw new SimError('no_live_connection', `${dev.jid} has no live connection`, 409);
    }
    sim.counters.kills[variant] = (sim.counters.kills[variant] ?? 0) + 1;
    const streamError = (attrs, content) => ({ tag: 'stream:error', attrs, ...(content ? { content } : {}) });
    for (const c of targets) {
      switch (variant) {
        case '401': // "logged out from the phone": the creds stop working
          if (dev) dev.removed = true;
          sim.sendAndClose(c, { tag: 'failure', attrs: { reason: '401' } });
          break;
        case 'device_removed':
          if (dev) dev.removed = true;
          sim.sendAndClose(c, streamError({ code: '401' }, [{ tag: 'conflict', attrs: { type: 'device_removed' } }]));
          break;
        case '440':
          sim.counters.conflicts++;
          if (dev) dev.conflicts++;
          sim.sendAndClose(c, streamError({}, [{ tag: 'conflict', attrs: { type: 'replaced' } }]));
          break;
        case '500': case '503': case '515':
          sim.sendAndClose(c, streamError({ code: variant }));
          break;
        case 'stream_end':
          sim.sendAndClose(c, { tag: 'xmlstreamend', attrs: {} });
          break;
        case 'tcp_drop': // no close frame, no FIN handshake: the socket is destroyed
          c.ws.terminate();
          break;
        case 'ws_close':
          c.ws.close(1000);
          break;
        case 'silent': // keep the socket, never send or answer again (client: 408 after keepAlive + 5 s)
          c.silent = true;
          break;
      }
      sim.event('kill', { conn: c.id, jid: c.jid, variant });
    }
    return { ok: true, variant, jid: dev?.jid ?? null, connections: targets.map(c => c.id) };
  }
}
