// The decrypt journal's storage (journal.mjs): an append-only segment log, so a decrypted message costs one
// fdatasync instead of the per-file writer's fsync + rename + directory fsync (docs/benchmarks.md, inbound).
//
// A record is the whole new state of one journal key (a `hash`): an unacked entry or its tombstone. One line each:
//     <byte length of json> <sha256(json) hex, first 16> <json>\n
// so a torn tail (a power cut during an append) is detected by its length or checksum and ignored; open truncates
// it away before appending, so a later record can never follow garbage.
//   - append(rec, durable): applied to `live` at once (a compaction snapshot always includes it), written in
//     call order by one writer; every record appended while a flush runs goes out in the next flush, with one
//     write and at most one fdatasync (group commit). `durable` resolves after the fdatasync; tombstones are not
//     synced (a lost one only re-emits a message, deduplicated by its event id) but ride on the next sync.
//   - compaction, inside a flush when the segment is more than twice its live data (and >= COMPACT_MIN_BYTES):
//     the live records go to a temp file (fsync), renamed to the next segment (directory fsync), then the old one
//     is deleted. A crash in between leaves two segments: both are read, oldest first, then the older deleted.
//   - a tombstone wins over an entry for the same hash whatever the order (an ack is final): reading an old
//     segment after a newer one, or a migrated per-file entry after the log, cannot resurrect an acked message.
// Files are created 0600 (they hold plaintexts).
import { open, readdir, rename, unlink } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';

export const COMPACT_MIN_BYTES = 4 * 1024 * 1024;
const SEG_RE = /^seg-(\d+)\.log$/;
const segName = (gen) => `seg-${String(gen).padStart(12, '0')}.log`;
const sum = (buf) => createHash('sha256').update(buf).digest('hex').slice(0, 16);

export function encodeRecord(rec) {
  const json = Buffer.from(JSON.stringify(rec), 'utf8');
  return Buffer.concat([Buffer.from(`${json.length} ${sum(json)} `, 'latin1'), json, Buffer.from('\n')]);
}

/** Every intact record of a segment's bytes, and the offset where the intact prefix ends. */
export function decodeRecords(buf) {
  const records = [];
  let off = 0;
  while (off < buf.length) {
    const nl = buf.indexOf(10, off);
    if (nl < 0) break; // no newline: torn
    const m = /^(\d+) ([0-9a-f]{16}) /.exec(buf.subarray(off, Math.min(nl, off + 40)).toString('latin1'));
    if (!m) break;
    const start = off + m[0].length;
    const json = buf.subarray(start, nl);
    if (json.length !== Number(m[1]) || sum(json) !== m[2]) break;
    let rec;
    try { rec = JSON.parse(json.toString('utf8')); } catch { break; }
    records.push(rec);
    off = nl + 1;
  }
  return { records, end: off };
}

const syncDir = async (dir) => {
  const fh = await open(dir, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
};

/** Open (or create) the log in `dir` (which exists). `live`: hash -> record, after every segment was read. */
export async function openLog(dir, { compactMinBytes = COMPACT_MIN_BYTES } = {}) {
  const live = new Map();
  const sizes = new Map(); // hash -> encoded bytes of its live record (the compaction trigger)
  let liveBytes = 0;
  const apply = (rec, bytes) => {
    const old = live.get(rec.hash);
    if (old?.acked && !rec.acked) return false;
    live.set(rec.hash, rec);
    liveBytes += bytes - (sizes.get(rec.hash) ?? 0);
    sizes.set(rec.hash, bytes);
    return true;
  };
  const forget = (hash) => {
    if (!live.delete(hash)) return;
    liveBytes -= sizes.get(hash) ?? 0;
    sizes.delete(hash);
  };

  const gens = (await readdir(dir)).map((n) => SEG_RE.exec(n)).filter(Boolean).map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  let gen = gens.length ? gens[gens.length - 1] : 1;
  let fh;
  let segBytes = 0;
  for (const g of gens) {
    const path = join(dir, segName(g));
    const buf = await (async () => {
      const h = await open(path, 'r');
      try { return await h.readFile(); } finally { await h.close(); }
    })();
    const { records, end } = decodeRecords(buf);
    for (const rec of records) if (rec?.hash) apply(rec, encodeRecord(rec).length);
    if (g === gen) {
      fh = await open(path, 'r+');
      if (end < buf.length) { // the torn tail of a power cut: cut it off before anything is appended
        await fh.truncate(end);
        await fh.sync();
      }
      segBytes = end;
    }
  }
  if (!fh) {
    fh = await open(join(dir, segName(gen)), 'wx+', 0o600);
    await fh.sync();
    await syncDir(dir);
  }
  for (const g of gens) if (g < gen) await unlink(join(dir, segName(g))).catch(() => {}); // a finished compaction's

  let batch = []; // encoded records waiting for the next flush
  let durableWanted = false;
  let scheduled = null; // the next flush, not yet started: appends join it
  let tail = Promise.resolve();
  let forceCompact = false;

  const compact = async () => {
    const next = gen + 1;
    const tmp = join(dir, `.${segName(next)}.tmp-${process.pid}-${next}`);
    const out = await open(tmp, 'wx', 0o600);
    let bytes = 0;
    try {
      const bufs = [...live.values()].map(encodeRecord);
      bytes = bufs.reduce((n, b) => n + b.length, 0);
      await out.writeFile(Buffer.concat(bufs));
      await out.sync();
    } finally {
      await out.close();
    }
    await rename(tmp, join(dir, segName(next)));
    await syncDir(dir);
    const old = fh;
    fh = await open(join(dir, segName(next)), 'r+');
    await old.close().catch(() => {});
    await unlink(join(dir, segName(gen))).catch(() => {});
    gen = next;
    segBytes = bytes;
  };

  const flushNow = async () => {
    scheduled = null;
    const bufs = batch;
    const durable = durableWanted;
    batch = [];
    durableWanted = false;
    if (forceCompact || (segBytes >= compactMinBytes && segBytes > 2 * liveBytes)) {
      forceCompact = false;
      await compact(); // the snapshot holds every record appended so far, this batch's too
      return;
    }
    if (!bufs.length) return;
    const data = Buffer.concat(bufs);
    await fh.write(data, 0, data.length, segBytes);
    segBytes += data.length;
    if (durable) await fh.datasync();
  };

  const schedule = () => {
    if (!scheduled) scheduled = tail = tail.catch(() => {}).then(flushNow);
    return scheduled;
  };

  /** Append `rec` (it has a `hash`); resolves once written, and after an fdatasync when `durable`. */
  const append = (rec, durable = false) => {
    const buf = encodeRecord(rec);
    if (apply(rec, buf.length)) batch.push(buf);
    durableWanted ||= durable;
    return schedule();
  };

  return {
    live, append, forget,
    /** Rewrite the live records into a new segment, durably (the migration from per-file entries). */
    compactNow: () => { forceCompact = true; return schedule(); },
    /** Resolves once everything appended so far is written. */
    flush: () => tail.catch(() => {}),
    close: async () => { await tail.catch(() => {}); await fh.close().catch(() => {}); },
    get segmentBytes() { return segBytes; },
    get segment() { return segName(gen); },
  };
}
