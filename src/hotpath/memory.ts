// The WASM memory of one hot-path instance: sized once, at creation, for everything it will
// hold (bitmaps, digest lists, I/O slots, scratch), then never grown — growing would detach
// every Buffer view handed out. Regions are carved with a bump allocator and live as long as
// the instance.
import { HotpathError } from './errors.js';
import { instantiate, type HotpathExports } from './wasm.js';

const PAGE = 65536;

export class HotpathMemory {
  readonly wasm: HotpathExports;
  private next: number;
  private readonly end: number;
  private readonly buffer: ArrayBuffer;

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

  /** Bytes still free for regions. */
  get free(): number {
    return this.end - this.next;
  }

  /** Carves `bytes` (rounded up to `alignment`) and returns the offset. */
  alloc(bytes: number, alignment = 64): number {
    const at = align(this.next, alignment);
    const size = align(bytes, 16);
    if (at + size > this.end) {
      throw new HotpathError('HOTPATH_OUT_OF_MEMORY', `hot-path memory exhausted: ${size} bytes wanted, ${this.end - at} left (size it larger at start-up)`);
    }
    this.next = at + size;
    return at;
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
