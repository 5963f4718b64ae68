// A dirty bitmap in WASM memory: one bit per grain ("the peer lacks this grain").
//
// Format, in memory and on disk: bit i (grain i) is bit (i & 7) of byte (i >> 3), least
// significant bit first. The byte length is ceil(bits / 8); in memory it is padded to a
// multiple of 16 bytes, and bits at or past `bits` are always zero.
import { HotpathError } from './errors.js';
import type { HotpathMemory } from './memory.js';
import { align } from './memory.js';

export interface BitRun {
  start: number;
  length: number;
}

/** Largest bitmap: 2^32 grains (16 TiB at 4 KiB). */
export const MAX_BITS = 2 ** 32;

export class DirtyBitmap {
  readonly offset: number;
  /** Bytes of the serialized form: ceil(bits / 8). */
  readonly byteLength: number;
  private readonly paddedLength: number;

  constructor(
    private readonly mem: HotpathMemory,
    readonly bits: number,
    /** Scratch for run listing: room for `scratchRuns` (start, length) f64 pairs. */
    private readonly scratch: number,
    private readonly scratchRuns: number,
  ) {
    if (!Number.isInteger(bits) || bits <= 0 || bits > MAX_BITS) throw new HotpathError('HOTPATH_RANGE', `bitmap of ${bits} bits: must be 1..${MAX_BITS}`);
    this.byteLength = Math.ceil(bits / 8);
    this.paddedLength = align(this.byteLength, 16) + 16;
    this.offset = mem.alloc(this.paddedLength);
    mem.view(this.offset, this.paddedLength).fill(0);
  }

  private check(start: number, count: number): void {
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > this.bits) {
      throw new HotpathError('HOTPATH_RANGE', `bits ${start}..${start + count} outside a bitmap of ${this.bits}`);
    }
  }

  set(start: number, count = 1): void {
    this.check(start, count);
    this.mem.wasm.bmFill(this.offset, start, count, 1);
  }

  clear(start: number, count = 1): void {
    this.check(start, count);
    this.mem.wasm.bmFill(this.offset, start, count, 0);
  }

  /** Gives its WASM memory back (a volume deleted or resized): the bitmap must not be used again. */
  release(): void {
    this.mem.release(this.offset);
  }

  clearAll(): void {
    this.mem.view(this.offset, this.paddedLength).fill(0);
  }

  /** Set bits in [start, start + count). */
  count(start = 0, count = this.bits - start): number {
    this.check(start, count);
    return this.mem.wasm.bmCount(this.offset, start, count);
  }

  /** Is any bit in the range set? */
  any(start = 0, count = this.bits - start): boolean {
    this.check(start, count);
    return count > 0 && this.mem.wasm.bmNextSet(this.offset, start, start + count) < start + count;
  }

  /** Are all bits in the range set? (True for an empty range.) */
  all(start = 0, count = this.bits - start): boolean {
    this.check(start, count);
    return this.mem.wasm.bmNextClear(this.offset, start, start + count) >= start + count;
  }

  /** Runs of set bits from `from`, at most `maxRuns` (resync and BLOCK_STATUS walk these). */
  runs(from = 0, maxRuns = this.scratchRuns): BitRun[] {
    this.check(from, 0);
    const out: BitRun[] = [];
    let pos = from;
    while (out.length < maxRuns && pos < this.bits) {
      const want = Math.min(this.scratchRuns, maxRuns - out.length);
      const n = this.mem.wasm.bmRuns(this.offset, pos, this.bits, this.scratch, want);
      const f64 = new Float64Array(this.mem.wasm.memory.buffer, this.scratch, n * 2);
      for (let i = 0; i < n; i++) out.push({ start: f64[2 * i]!, length: f64[2 * i + 1]! });
      if (n < want) break;
      const last = out[out.length - 1]!;
      pos = last.start + last.length;
    }
    return out;
  }

  /** this |= other (bitmaps of the same size: e.g. both sides' dirty bits before a resync). */
  merge(other: DirtyBitmap): void {
    if (other.bits !== this.bits) throw new HotpathError('HOTPATH_SIZE_MISMATCH', `cannot merge a bitmap of ${other.bits} bits into one of ${this.bits}`);
    this.mem.wasm.bmOr(this.offset, other.offset, this.paddedLength);
  }

  /** The on-disk form: a copy of the ceil(bits / 8) bytes. */
  serialize(): Buffer {
    return Buffer.from(this.mem.view(this.offset, this.byteLength));
  }

  /** Replaces the contents with a serialized bitmap of the same size. */
  load(bytes: Uint8Array): void {
    if (bytes.length !== this.byteLength) throw new HotpathError('HOTPATH_SIZE_MISMATCH', `serialized bitmap has ${bytes.length} bytes, expected ${this.byteLength}`);
    const view = this.mem.view(this.offset, this.paddedLength);
    view.fill(0);
    view.set(bytes);
    // Keep the invariant: no bits at or past `bits`.
    const tail = this.bits & 7;
    if (tail !== 0) view[this.byteLength - 1]! &= (1 << tail) - 1;
  }

  /** A view of the bytes in WASM memory (no copy), e.g. to write to disk directly. */
  bytes(): Buffer {
    return this.mem.view(this.offset, this.byteLength);
  }
}
