// I/O slots: Buffers that are views of WASM memory, handed out from a fixed arena, so data read
// from disk or the network can be hashed where it lies. Large requests get power-of-two slots
// carved once from the arena and reused; when the arena is spent, or for small requests,
// ordinary Buffers are returned (releasing those is a no-op), so callers never wait here —
// backpressure is the I/O budget's job.
import { HotpathError } from './errors.js';
import type { HotpathMemory } from './memory.js';

/** Below this, Node's own pooled allocator is cheaper than a slot. */
export const MIN_SLOT = 64 * 1024;

export class SlotPool {
  private readonly free = new Map<number, number[]>();
  /** Offsets of slots handed out, with their class size. */
  private readonly inUse = new Map<number, number>();
  private carved = 0;
  private readonly arena: number;

  constructor(
    private readonly mem: HotpathMemory,
    readonly arenaBytes: number,
  ) {
    this.arena = arenaBytes > 0 ? mem.alloc(arenaBytes, 4096) : 0;
  }

  /** Slots currently handed out (for tests and metrics). */
  get slotsInUse(): number {
    return this.inUse.size;
  }

  /** A buffer of exactly `length` bytes: a WASM slot when it is large and one is available. */
  acquire(length: number): Buffer {
    if (length < MIN_SLOT) return Buffer.allocUnsafe(length);
    const size = 2 ** Math.ceil(Math.log2(length));
    let offset = this.free.get(size)?.pop();
    if (offset === undefined) {
      if (this.carved + size > this.arenaBytes) return Buffer.allocUnsafeSlow(length);
      offset = this.arena + this.carved;
      this.carved += size;
    }
    this.inUse.set(offset, size);
    return this.mem.view(offset, length);
  }

  /** Gives a buffer from `acquire` back; a slot released twice throws. */
  release(buf: Buffer): void {
    const offset = this.mem.offsetOf(buf);
    if (offset < 0) return; // an ordinary Buffer: the garbage collector has it
    const size = this.inUse.get(offset);
    if (size === undefined) throw new HotpathError('HOTPATH_DOUBLE_RELEASE', `slot at ${offset} released twice (or never acquired)`);
    this.inUse.delete(offset);
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(offset);
  }
}
