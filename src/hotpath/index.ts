// The typed face of the WASM hot path. Nothing outside src/hotpath/ touches raw WASM exports.
//
//   const hot = Hotpath.create({ bitmaps: [bits], digests: n, slotArenaBytes: 32 << 20 });
//   const bm = hot.bitmap(bits);            // dirty bits, WASM run listing and popcount
//   const slot = hot.slots.acquire(len);    // a Buffer that is a view of WASM memory
//   hot.blockDigests(slot, 4096, list);     // XXH3 of every block, no copy
import { blockDigests, checkBlockSize, xxh3 } from './checksum.js';
import { DigestList, diffRuns, type IndexRun } from './digests.js';
import { DirtyBitmap } from './bitmap.js';
import { HotpathError } from './errors.js';
import { align, HotpathMemory } from './memory.js';
import { SlotPool } from './slots.js';

export { DirtyBitmap, DigestList, HotpathError, SlotPool, checkBlockSize };
export type { IndexRun };
export type { BitRun } from './bitmap.js';

/** Runs one run-listing or diff call can return before the facade calls again. */
const SCRATCH_RUNS = 4096;

export interface HotpathSizing {
  /** Bit counts of the bitmaps that will be created. */
  readonly bitmaps?: readonly number[];
  /** Total digests across the digest lists that will be created. */
  readonly digests?: number;
  readonly digestLists?: number;
  /** Bytes for I/O slots. */
  readonly slotArenaBytes?: number;
  /** Largest buffer outside WASM memory that `digestOf` must hash (it is copied in first). */
  readonly stagingBytes?: number;
}

/** Default staging: one 64 KiB buffer (smaller buffers never come from slots). */
function stagingBytes(s: HotpathSizing): number {
  return Math.max(s.stagingBytes ?? 0, 64 * 1024);
}

export class Hotpath {
  readonly slots: SlotPool;
  private readonly scratch: number;
  private readonly staging: Buffer;

  private constructor(
    private readonly mem: HotpathMemory,
    slotArenaBytes: number,
    stagingBytes: number,
  ) {
    this.scratch = mem.alloc(SCRATCH_RUNS * 16);
    this.slots = new SlotPool(mem, slotArenaBytes);
    this.staging = mem.view(mem.alloc(stagingBytes), stagingBytes);
  }

  /** Bytes of WASM memory needed for `s` (the one sizing decision, made at start-up). */
  static bytesFor(s: HotpathSizing): number {
    const bitmaps = (s.bitmaps ?? []).reduce((sum, bits) => sum + align(Math.ceil(bits / 8), 16) + 16 + 64, 0);
    const digests = (s.digests ?? 0) * 8 + ((s.digestLists ?? 0) + 1) * 96;
    return SCRATCH_RUNS * 16 + 64 + bitmaps + digests + align(s.slotArenaBytes ?? 0, 4096) + align(stagingBytes(s), 64) + 4096;
  }

  static create(s: HotpathSizing = {}): Hotpath {
    return new Hotpath(new HotpathMemory(Hotpath.bytesFor(s)), s.slotArenaBytes ?? 0, stagingBytes(s));
  }

  bitmap(bits: number): DirtyBitmap {
    return new DirtyBitmap(this.mem, bits, this.scratch, SCRATCH_RUNS);
  }

  digestList(length: number): DigestList {
    if (!Number.isInteger(length) || length < 0) throw new HotpathError('HOTPATH_RANGE', `digest list length ${length}`);
    return new DigestList(this.mem, length);
  }

  /** XXH3-64 of a buffer in WASM memory (a slot). */
  xxh3(buf: Uint8Array): bigint {
    return xxh3(this.mem, buf);
  }

  /**
   * XXH3-64 of any buffer: hashed in place when it is in WASM memory (a slot), else copied into
   * the staging region first (a 4 KiB copy costs less than the hash call around it). The same
   * holds for blockDigests.
   */
  digestOf(buf: Uint8Array): bigint {
    return xxh3(this.mem, this.inWasm(buf));
  }

  /** `buf` itself when it is in WASM memory, else a copy of it in the staging region. */
  private inWasm(buf: Uint8Array): Uint8Array {
    if (this.mem.offsetOf(buf) >= 0) return buf;
    if (buf.length > this.staging.length) throw new HotpathError('HOTPATH_RANGE', `${buf.length} bytes exceed the staging region of ${this.staging.length}`);
    this.staging.set(buf);
    return this.staging.subarray(0, buf.length);
  }

  /** XXH3-64 of each `blockSize` block of `buf` (in WASM memory) into `out` from index `at`. */
  blockDigests(buf: Uint8Array, blockSize: number, out: DigestList, at = 0): number {
    return blockDigests(this.mem, this.inWasm(buf), blockSize, out, at);
  }

  /** Runs of indices where two digest lists differ. */
  diffRuns(a: DigestList, b: DigestList, from = 0, maxRuns = Infinity): IndexRun[] {
    return diffRuns(this.mem, this.scratch, SCRATCH_RUNS, a, b, from, maxRuns);
  }

  /** Sets bit i of `into` wherever a[i] != b[i]; returns how many differ. */
  diffIntoBitmap(a: DigestList, b: DigestList, into: DirtyBitmap): number {
    if (a.length !== b.length || into.bits < a.length) throw new HotpathError('HOTPATH_SIZE_MISMATCH', 'digest lists and bitmap sizes do not match');
    return this.mem.wasm.diffBitmap(a.offset, b.offset, a.length, into.offset);
  }

  /**
   * True when every byte of `buf` is zero (thin volumes: an all-zero write allocates nothing).
   * In place when `buf` is in WASM memory (a slot: every client and peer payload), else copied
   * through the staging region piece by piece.
   */
  allZero(buf: Uint8Array): boolean {
    const at = this.mem.offsetOf(buf);
    if (at >= 0) return this.mem.wasm.isZero(at, buf.length) !== 0;
    const staging = this.mem.offsetOf(this.staging);
    for (let off = 0; off < buf.length; off += this.staging.length) {
      const piece = buf.subarray(off, off + this.staging.length);
      this.staging.set(piece);
      if (this.mem.wasm.isZero(staging, piece.length) === 0) return false;
    }
    return true;
  }

  /** Free bytes left in WASM memory (for tests and start-up checks). */
  get freeBytes(): number {
    return this.mem.free;
  }
}
