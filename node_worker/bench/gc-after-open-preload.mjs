// Bench-only preload emulating "one full GC after login" without touching src/worker.mjs:
//   node --expose-gc --import ./bench/gc-after-open-preload.mjs src/worker.mjs
// Watches the worker's own protocol output for the `open` event and calls global.gc() BENCH_GC_DELAY_MS
// (default 5000) later, once (the login burst: pre-key upload, app-state/history sync, TurboFan code).
const delay = Number(process.env.BENCH_GC_DELAY_MS ?? 5000);
const write = process.stdout.write;
let armed = true;
process.stdout.write = function (chunk, ...rest) {
  if (armed && typeof globalThis.gc === 'function' && String(chunk).includes('"type":"open"')) {
    armed = false;
    setTimeout(() => globalThis.gc(), delay).unref();
  }
  return write.call(this, chunk, ...rest);
};
