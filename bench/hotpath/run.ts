// Hot-path micro-benchmarks: our WASM kernels against the best libraries and plain TypeScript.
//   npm run bench:hotpath [-- --json]
// GB/s is bytes of input (data hashed, bitmap scanned, digest lists compared) per second, the
// median of several timed runs after a warm-up.
import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';
import zlib from 'node:zlib';
import { xxh3 as nodeRsXxh3, xxh64 as nodeRsXxh64 } from '@node-rs/xxhash';
import { createCRC32, createXXHash3, createXXHash64 } from 'hash-wasm';
import xxhashWasm from 'xxhash-wasm';
import { Hotpath } from '../../src/hotpath/index.js';

const { values: opts } = parseArgs({ options: { json: { type: 'boolean', default: false } } });

interface Row {
  impl: string;
  case: string;
  gbps: number;
}
const rows: Row[] = [];

/** Median GB/s of `runs` timed calls of fn, each processing `bytes`. */
function measure(impl: string, name: string, bytes: number, fn: () => void, runs = 7): void {
  // Warm-up for at least 300 ms: V8 first runs WASM through its baseline compiler (Liftoff)
  // and tiers up to the optimizing one only once a function is hot.
  for (const t0 = Date.now(); Date.now() - t0 < 300; ) fn();
  const rates: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t = process.hrtime.bigint();
    fn();
    rates.push(bytes / (Number(process.hrtime.bigint() - t) / 1e9) / 1e9);
  }
  rates.sort((a, b) => a - b);
  const row = { impl, case: name, gbps: rates[runs >> 1]! };
  rows.push(row);
  if (opts.json) console.log(JSON.stringify(row));
}

const DATA = 64 << 20;
const hot = Hotpath.create({ slotArenaBytes: 2 * DATA, digests: DATA / 4096 + 2 * (1 << 22), digestLists: 3, bitmaps: [2 ** 28, 2 ** 28, 1 << 22] });
const data = hot.slots.acquire(DATA);
for (let off = 0; off < DATA; off += 65536) crypto.getRandomValues(data.subarray(off, off + 65536));
const plain = Buffer.from(data); // the same bytes outside WASM memory, for the libraries

const ZERO_REF = Buffer.alloc(DATA, 1).fill(0); // real pages, see the zero-check section
const hw3 = await createXXHash3();
const hw64 = await createXXHash64();
const hwCrc32c = await createCRC32(0x82f63b78);
const { h64Raw } = await xxhashWasm();
const zlibCrc32 = (zlib as unknown as { crc32?: (b: Uint8Array, v?: number) => number }).crc32;

function perBlock(block: number, hash: (b: Buffer) => unknown): () => void {
  return () => {
    for (let off = 0; off < DATA; off += block) hash(plain.subarray(off, off + block));
  };
}

// --- checksums -------------------------------------------------------------------------------
for (const block of [4096, 65536]) {
  const name = `hash ${block / 1024} KiB blocks`;
  const digests = hot.digestList(DATA / block);
  measure('nbd-mirror', name, DATA, () => hot.blockDigests(data, block, digests));
  measure('hash-wasm xxhash3', name, DATA, perBlock(block, (b) => (hw3.init(), hw3.update(b), hw3.digest('binary'))));
  measure('hash-wasm xxhash64', name, DATA, perBlock(block, (b) => (hw64.init(), hw64.update(b), hw64.digest('binary'))));
  measure('hash-wasm crc32c', name, DATA, perBlock(block, (b) => (hwCrc32c.init(), hwCrc32c.update(b), hwCrc32c.digest('binary'))));
  measure('xxhash-wasm h64', name, DATA, perBlock(block, (b) => h64Raw(b)));
  measure('@node-rs/xxhash xxh3 (native)', name, DATA, perBlock(block, (b) => nodeRsXxh3.xxh64(b)));
  measure('@node-rs/xxhash xxh64 (native)', name, DATA, perBlock(block, (b) => nodeRsXxh64(b)));
  measure('node:crypto sha256', name, DATA, perBlock(block, (b) => createHash('sha256').update(b).digest()), 3);
  if (zlibCrc32) measure('zlib.crc32', name, DATA, perBlock(block, (b) => zlibCrc32(b)));
}
{
  const name = 'hash one 64 MiB buffer';
  measure('nbd-mirror', name, DATA, () => hot.xxh3(data));
  measure('hash-wasm xxhash3', name, DATA, () => (hw3.init(), hw3.update(plain), hw3.digest('binary')));
  measure('hash-wasm xxhash64', name, DATA, () => (hw64.init(), hw64.update(plain), hw64.digest('binary')));
  measure('hash-wasm crc32c', name, DATA, () => (hwCrc32c.init(), hwCrc32c.update(plain), hwCrc32c.digest('binary')));
  measure('xxhash-wasm h64', name, DATA, () => h64Raw(plain));
  measure('@node-rs/xxhash xxh3 (native)', name, DATA, () => nodeRsXxh3.xxh64(plain));
  measure('@node-rs/xxhash xxh64 (native)', name, DATA, () => nodeRsXxh64(plain));
  measure('node:crypto sha256', name, DATA, () => createHash('sha256').update(plain).digest(), 3);
  if (zlibCrc32) measure('zlib.crc32', name, DATA, () => zlibCrc32(plain));
}

// --- bitmaps: 2^28 bits (1 TiB at 4 KiB grains) --------------------------------------------------
const BITS = 2 ** 28;
const BYTES = BITS / 8;

/** Plain TypeScript over a Uint32Array: the baseline a careful JS implementation reaches. */
function jsRuns(words: Uint32Array, max: number): number {
  let runs = 0;
  let inRun = false;
  for (let w = 0; w < words.length && runs < max; w++) {
    const v = words[w]!;
    if (v === 0) {
      inRun = false;
      continue;
    }
    if (v === 0xffffffff) {
      if (!inRun) runs++;
      inRun = true;
      continue;
    }
    for (let b = 0; b < 32; b++) {
      const set = (v >>> b) & 1;
      if (set && !inRun) runs++;
      inRun = set === 1;
    }
  }
  return runs;
}
function jsPopcount(words: Uint32Array): number {
  let n = 0;
  for (let w = 0; w < words.length; w++) {
    let v = words[w]!;
    v = v - ((v >>> 1) & 0x55555555);
    v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
    n += (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
  }
  return n;
}

for (const [density, fill] of [
  ['sparse', (bm: ReturnType<typeof hot.bitmap>) => { for (let i = 0; i < 1000; i++) bm.set((i * 268_435) % (BITS - 64), 64); }],
  ['dense', (bm: ReturnType<typeof hot.bitmap>) => { for (let i = 0; i < BITS; i += 1 << 16) bm.set(i, 1 << 15); }],
] as const) {
  const bm = hot.bitmap(BITS);
  fill(bm);
  const words = new Uint32Array(bm.serialize().buffer.slice(0));
  measure('nbd-mirror', `bitmap run listing (${density})`, BYTES, () => bm.runs(0, 1e6), 5);
  measure('plain TS Uint32Array', `bitmap run listing (${density})`, BYTES, () => jsRuns(words, 1e6), 3);
  measure('nbd-mirror', `bitmap popcount (${density})`, BYTES, () => bm.count(), 5);
  measure('plain TS Uint32Array', `bitmap popcount (${density})`, BYTES, () => jsPopcount(words), 3);
}

// --- digest-list diff: 2^22 entries (16 TiB of 4 KiB blocks is 2^32; this is 16 GiB) -----------
const N = 1 << 22;
const a = hot.digestList(N);
const b = hot.digestList(N);
for (let i = 0; i < N; i++) a.values[i] = BigInt(i) * 0x9e3779b97f4a7c15n & 0xffffffffffffffffn;
const diffBits = hot.bitmap(N);
for (const pct of [0, 0.1, 10]) {
  b.values.set(a.values);
  const every = pct === 0 ? 0 : Math.round(100 / pct);
  if (every) for (let i = 0; i < N; i += every) b.values[i] = b.values[i]! ^ 1n;
  measure('nbd-mirror', `digest diff 2^22 (${pct} % differ)`, 2 * N * 8, () => hot.diffIntoBitmap(a, b, diffBits), 5);
  measure('nbd-mirror (as run objects)', `digest diff 2^22 (${pct} % differ)`, 2 * N * 8, () => hot.diffRuns(a, b), 5);
  const a32 = new Uint32Array(a.values.buffer, a.values.byteOffset, 2 * N);
  const b32 = new Uint32Array(b.values.buffer, b.values.byteOffset, 2 * N);
  measure('plain TS Uint32Array', `digest diff 2^22 (${pct} % differ)`, 2 * N * 8, () => {
    let runs = 0;
    let inRun = false;
    for (let i = 0; i < N; i++) {
      const d = a32[2 * i] !== b32[2 * i] || a32[2 * i + 1] !== b32[2 * i + 1];
      if (d && !inRun) runs++;
      inRun = d;
    }
    return runs;
  }, 3);
}

// --- zero detection (thin volumes: an all-zero write allocates nothing) -----------------------
{
  const zeros = hot.slots.acquire(DATA);
  zeros.fill(0);
  // Written, not only allocated: a fresh Buffer.alloc of this size is calloc'ed pages that all map
  // the kernel's one zero page (always in cache), which would flatter whatever reads them.
  const plainZeros = Buffer.alloc(DATA, 1).fill(0);
  const name = 'zero check, 64 MiB of zeros';
  measure('nbd-mirror', name, DATA, () => hot.allZero(zeros));
  measure('nbd-mirror (outside WASM memory: staged copy)', name, DATA, () => hot.allZero(plainZeros));
  measure('Buffer.equals against a zero buffer', name, DATA, () => plainZeros.equals(ZERO_REF));
  measure('plain TS Float64Array scan', name, DATA, () => {
    const f = new Float64Array(plainZeros.buffer, plainZeros.byteOffset, DATA / 8);
    for (let i = 0; i < f.length; i++) if (f[i] !== 0) return false;
    return true;
  }, 3);
  hot.slots.release(zeros);
}

// --- table -----------------------------------------------------------------------------------
if (!opts.json) {
  const cases = [...new Set(rows.map((r) => r.case))];
  console.log(`# hot-path kernels, ${new Date().toISOString()}, node ${process.version}; GB/s, median`);
  for (const c of cases) {
    console.log(`\n${c}`);
    const group = rows.filter((r) => r.case === c).sort((x, y) => y.gbps - x.gbps);
    for (const r of group) console.log(`  ${r.impl.padEnd(32)} ${r.gbps.toFixed(2).padStart(8)}`);
  }
  const ours = (c: string) => rows.find((r) => r.case === c && r.impl === 'nbd-mirror')!.gbps;
  const best = (c: string, f: (impl: string) => boolean) => Math.max(...rows.filter((r) => r.case === c && f(r.impl)).map((r) => r.gbps));
  const h4 = 'hash 4 KiB blocks';
  const targets: Array<[string, number, number]> = [
    ['batched XXH3, 4 KiB blocks (GB/s)', ours(h4), 20],
    ['vs fastest WASM library at 4 KiB (x)', ours(h4) / best(h4, (i) => i.startsWith('hash-wasm') || i.startsWith('xxhash-wasm')), 2.5],
    ['vs native xxh64 at 4 KiB (x)', ours(h4) / best(h4, (i) => i.includes('xxh64 (native)')), 1.5],
    ['sparse run listing (GB/s of bitmap)', ours('bitmap run listing (sparse)'), 20],
    ['diff at 0 % differing (GB/s)', ours('digest diff 2^22 (0 % differ)'), 30],
    ['zero check in WASM memory (GB/s)', ours('zero check, 64 MiB of zeros'), 10],
  ];
  console.log('\ntargets');
  for (const [name, got, want] of targets) console.log(`  ${name.padEnd(40)} ${got.toFixed(2).padStart(8)}  target >= ${want}  ${got >= want ? 'pass' : 'MISS'}`);
}
