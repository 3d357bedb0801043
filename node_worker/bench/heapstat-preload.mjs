// Bench-only preload (`node --import ./bench/heapstat-preload.mjs ...`): after BENCH_HEAPSTAT_MS (default 5000)
// writes one JSON line to stderr with process.memoryUsage() and V8's heap spaces (MiB). With BENCH_GC_AT_MS set
// (needs --expose-gc), calls global.gc() at that time first, to see what a one-off full GC gives back.
import v8 from 'node:v8';

const mib = (b) => Math.round(b / 1048576 * 10) / 10;
const gcAt = Number(process.env.BENCH_GC_AT_MS || 0);
const at = Number(process.env.BENCH_HEAPSTAT_MS || 5000);
if (gcAt) setTimeout(() => { globalThis.gc?.(); }, gcAt).unref();
setTimeout(() => {
  const mu = process.memoryUsage();
  const spaces = Object.fromEntries(v8.getHeapSpaceStatistics().map((s) =>
    [s.space_name.replace('_space', ''), `${mib(s.space_used_size)}/${mib(s.physical_space_size)}`]));
  const hs = v8.getHeapStatistics();
  const code = v8.getHeapCodeStatistics();
  process.stderr.write(`${JSON.stringify({ heapstat: true, rss: mib(mu.rss), heapTotal: mib(mu.heapTotal),
    heapUsed: mib(mu.heapUsed), external: mib(mu.external), arrayBuffers: mib(mu.arrayBuffers),
    malloced: mib(hs.malloced_memory), peakMalloced: mib(hs.peak_malloced_memory),
    bytecodeAndMeta: mib(code.bytecode_and_metadata_size), codeAndMeta: mib(code.code_and_metadata_size),
    extScriptSrc: mib(code.external_script_source_size), spaces })}\n`);
}, at).unref();
