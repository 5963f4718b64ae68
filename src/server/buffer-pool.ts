// Reusable buffers for large payloads and READ replies. Allocating a fresh 1 MiB Buffer per
// request costs page faults and garbage-collector work on every request and lets RSS drift up
// under load; buffers of the same power-of-two class are handed out again instead. Small
// requests use Node's own allocator, which is already pooled for them.

/** Below this, plain Buffer.allocUnsafe is cheap. */
const MIN_POOLED = 64 * 1024;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  /** Bytes of every block this pool made and still keeps track of (in use or idle). */
  private allocated = 0;

  /** `maxBytes` caps the blocks kept (in use plus idle); blocks made past it are dropped on release. */
  constructor(private readonly maxBytes: number) {}

  /** A buffer of exactly `length` bytes (a view of a pooled block when large). */
  acquire(length: number): Buffer {
    if (length < MIN_POOLED) return Buffer.allocUnsafe(length);
    const size = classSize(length);
    const block = this.free.get(size)?.pop();
    if (block) return block.subarray(0, length);
    this.allocated += size;
    return Buffer.allocUnsafeSlow(size).subarray(0, length);
  }

  /** Gives a buffer from `acquire` back once nothing (socket, file I/O) uses it any more. */
  release(buf: Buffer): void {
    if (buf.length < MIN_POOLED) return;
    const size = classSize(buf.length);
    if (this.allocated > this.maxBytes) {
      this.allocated -= size; // over the cap: let the garbage collector have it
      return;
    }
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(Buffer.from(buf.buffer, buf.byteOffset, size));
  }
}

function classSize(length: number): number {
  return 2 ** Math.ceil(Math.log2(length));
}
