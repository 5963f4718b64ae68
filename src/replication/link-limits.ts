// What the peer link may hold in memory, on both sides of its socket (DRBD's `max-buffers` for
// receiving; a send queue that must keep moving). Pure: counters and clocks, no sockets.
//
// Receive: every frame the link hands to a volume is in work — it holds its body, and the buffer
// its answer reads — from when it is handed over until the volume gives the body back
// (PeerLink.release). While what is in work is at the limit, the link decodes no further frame
// and stops reading its socket; the sender then stalls on TCP's own window.
//
// Send: what this node queues for the peer must keep leaving. A peer that reads nothing (stuck,
// or rogue) would otherwise make the queue grow without end; an honest peer always reads, as
// its own receive pause ends by itself when its disk completes the work it holds.

export interface LinkLimits {
  /** Cost (bytes) of the frames in work at which the link stops decoding more. */
  readonly workBytes: number;
  /** Frames in work at which the link stops decoding more. */
  readonly workFrames: number;
  /** Bytes queued for the peer's socket over which the link is reset. */
  readonly queuedBytes: number;
}

const MiB = 1024 * 1024;

/**
 * Far above what normal mirroring keeps in work or queued, so they never throttle it:
 * - in work on the receiver: the peer's client writes, which its NBD budget bounds (a 64 MiB pool
 *   plus 256 KiB per busy connection, at most 256 requests per connection), and the answers to
 *   its resync requests (8 in flight, ≤ 1 MiB each). 64 MiB is the peer's whole pool: a receiver
 *   whose disk keeps up never pauses, one that falls behind pauses with that much queued — about
 *   a tenth of a second of a disk's writing. 1024 frames: a far deeper queue than any disk gains
 *   from, and a bound on small frames whose bytes are no worry but whose work is.
 * - queued to send: this node's client writes (its own NBD budget, as above), answers to the
 *   peer's reads (the peer's budget) and resync data (≤ 16 MiB), together under 256 MiB up to
 *   about 200 busy client connections on each node. Past it the peer is not reading: nothing an
 *   honest peer does holds this node's sends back that long.
 */
export const DEFAULT_LINK_LIMITS: LinkLimits = { workBytes: 64 * MiB, workFrames: 1024, queuedBytes: 256 * MiB };

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

/**
 * Watches one socket's send queue. Progress is a write completing (Node reports no finer
 * progress: a large writev counts once it has all left), so a stall is a queue that stays
 * non-empty with nothing completing for longer than `stallMs`.
 */
export class SendWatch {
  private sent = 0;
  private since = 0;

  constructor(
    private readonly limits: LinkLimits,
    private readonly stallMs: number,
    now: number,
  ) {
    this.since = now;
  }

  /**
   * `queued`: bytes waiting to leave; `sent`: bytes whose writes have completed, ever. Why the
   * link must be reset, or undefined.
   */
  check(queued: number, sent: number, now: number): string | undefined {
    if (queued > this.limits.queuedBytes) return `${queued} bytes queued for the peer (limit ${this.limits.queuedBytes})`;
    if (queued === 0 || sent !== this.sent) {
      this.sent = sent;
      this.since = now;
      return undefined;
    }
    if (now - this.since > this.stallMs) return `the peer took none of ${queued} queued bytes for ${now - this.since} ms`;
    return undefined;
  }
}
