// What the peer link may hold in memory (DRBD's `max-buffers`). Pure: counters, no sockets.
//
// Receive: every frame the link hands to a volume is in work — it holds its body, and the buffer
// its answer reads — from when it is handed over until the volume gives the body back
// (PeerLink.release). While what is in work is at the limit, the link decodes no further frame
// and stops reading its socket; the sender then stalls on TCP's own window.

export interface LinkLimits {
  /** Cost (bytes) of the frames in work at which the link stops decoding more. */
  readonly workBytes: number;
  /** Frames in work at which the link stops decoding more. */
  readonly workFrames: number;
}

const MiB = 1024 * 1024;

/**
 * Far above what normal mirroring keeps in work, so they never throttle it: the peer's client
 * writes, which its NBD budget bounds (a 64 MiB pool plus 256 KiB per busy connection, at most
 * 256 requests per connection), and the answers to its resync requests (8 in flight, ≤ 1 MiB
 * each). 64 MiB is the peer's whole pool: a receiver whose disk keeps up never pauses, one that
 * falls behind pauses with that much queued — about a tenth of a second of a disk's writing.
 * 1024 frames: a far deeper queue than any disk gains from, and a bound on small frames whose
 * bytes are no worry but whose work is.
 */
export const DEFAULT_LINK_LIMITS: LinkLimits = { workBytes: 64 * MiB, workFrames: 1024 };

/** The frames a volume works on, each with its cost, keyed by its body (one Buffer per frame). */
export class WorkBudget {
  private readonly inWork = new Map<Buffer, number>();
  private cost = 0;

  constructor(private readonly limits: LinkLimits) {}

  get frames(): number {
    return this.inWork.size;
  }

  get bytes(): number {
    return this.cost;
  }

  /**
   * May a frame whose body is `length` bytes start now? Always when nothing is in work, so a
   * frame larger than the limit goes through alone instead of waiting for ever.
   */
  admits(length: number): boolean {
    const n = this.inWork.size;
    return n === 0 || (n < this.limits.workFrames && this.cost + length <= this.limits.workBytes);
  }

  charge(body: Buffer, cost: number): void {
    this.inWork.set(body, cost);
    this.cost += cost;
  }

  /** The volume is done with `body`; false if it was not in work (a link frame, or given back twice). */
  release(body: Buffer): boolean {
    const cost = this.inWork.get(body);
    if (cost === undefined) return false;
    this.inWork.delete(body);
    this.cost -= cost;
    return true;
  }
}
