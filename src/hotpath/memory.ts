// The WASM memory of one hot-path instance: sized once, at creation, for everything it will
// hold (bitmaps, digest lists, I/O slots, scratch), then never grown — growing would detach
// every Buffer view handed out. Regions are carved with a bump allocator; a region given back
// (a volume deleted or resized online: its bitmap and digest lists) goes on a free list that
// later regions are carved from first (first fit, neighbours merged), so a node can create and
// delete volumes for as long as it runs within the room it was sized with.
import { HotpathError } from './errors.js';
import { instantiate, type HotpathExports } from './wasm.js';

const PAGE = 65536;

export class HotpathMemory {
  readonly wasm: HotpathExports;
  private next: number;
  private readonly end: number;
  private readonly buffer: ArrayBuffer;
  /** Size of each region handed out and not given back, by offset. */
  private readonly sizes = new Map<number, number>();
  /** Regions given back, sorted by offset, neighbours merged. */
  private readonly freed: Array<{ at: number; size: number }> = [];

  constructor(bytes: number) {
    this.wasm = instantiate();
    const memory = this.wasm.memory;
    const base = align(this.wasm.heapBase(), 64);
    const pages = Math.ceil((base + bytes) / PAGE) - memory.buffer.byteLength / PAGE;
    if (pages > 0) memory.grow(pages);
    this.buffer = memory.buffer;
    this.next = base;
    this.end = memory.buffer.byteLength;
  }

  /** Bytes still free for regions (never carved, or given back). */
  get free(): number {
    return this.end - this.next + this.freed.reduce((sum, f) => sum + f.size, 0);
  }

  /**
   * Carves `bytes` at an offset aligned to `alignment` and returns the offset. Regions are whole
   * 64-byte units, so regions carved one after the other touch, and merge when given back.
   */
  alloc(bytes: number, alignment = 64): number {
    const size = align(bytes, 64);
    const reused = this.fromFreed(size, alignment);
    if (reused !== undefined) return reused;
    const at = align(this.next, alignment);
    if (at + size > this.end) {
      throw new HotpathError('HOTPATH_OUT_OF_MEMORY', `hot-path memory exhausted: ${size} bytes wanted, ${this.end - at} left (size it larger at start-up)`);
    }
    this.next = at + size;
    this.sizes.set(at, size);
    return at;
  }

  /** Gives back a region `alloc` returned; its views must not be used after this. */
  release(offset: number): void {
    const size = this.sizes.get(offset);
    if (size === undefined) throw new HotpathError('HOTPATH_DOUBLE_RELEASE', `no region at ${offset} to give back`);
    this.sizes.delete(offset);
    let i = this.freed.findIndex((f) => f.at > offset);
    if (i < 0) i = this.freed.length;
    this.freed.splice(i, 0, { at: offset, size });
    // Merge with the neighbours it touches (the next first: indices stay valid).
    const next = this.freed[i + 1];
    if (next && offset + size === next.at) {
      this.freed[i]!.size += next.size;
      this.freed.splice(i + 1, 1);
    }
    const prev = this.freed[i - 1];
    if (prev && prev.at + prev.size === offset) prev.size += this.freed.splice(i, 1)[0]!.size;
  }

  /** First fit among the regions given back: the aligned part of one, the rest stays free. */
  private fromFreed(size: number, alignment: number): number | undefined {
    for (let i = 0; i < this.freed.length; i++) {
      const f = this.freed[i]!;
      const at = align(f.at, alignment);
      if (at + size > f.at + f.size) continue;
      const pieces = [
        { at: f.at, size: at - f.at },
        { at: at + size, size: f.at + f.size - at - size },
      ].filter((p) => p.size > 0);
      this.freed.splice(i, 1, ...pieces);
      this.sizes.set(at, size);
      return at;
    }
    return undefined;
  }

  /** A Buffer view of [offset, offset + length) of WASM memory (no copy). */
  view(offset: number, length: number): Buffer {
    this.assertNotGrown();
    return Buffer.from(this.buffer, offset, length);
  }

  /** The WASM offset of `buf` if it is a view of this memory, else -1. */
  offsetOf(buf: Uint8Array): number {
    return buf.buffer === this.buffer ? buf.byteOffset : -1;
  }

  assertNotGrown(): void {
    if (this.wasm.memory.buffer !== this.buffer) throw new HotpathError('HOTPATH_MEMORY_GREW', 'WASM memory grew after start-up: every view is detached');
  }
}

export function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}
