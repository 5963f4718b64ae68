// Background-copy pacing for resync and verify (DRBD's c-max-rate / c-min-rate idea):
//   - never faster than `maxBytesPerSecond`;
//   - while clients are doing I/O on the volume (seen within the last `busyWindowMs`), no faster
//     than `busyBytesPerSecond`, so their requests do not queue behind bulk copies.
// A token bucket with 100 ms of burst; `take` calls back when the bytes may go.

export interface RatePolicy {
  /** Upper limit, bytes per second (Infinity: none). */
  readonly maxBytesPerSecond: number;
  /** Limit while clients are busy, bytes per second. */
  readonly busyBytesPerSecond: number;
  /** How long after the last client request the volume still counts as busy. */
  readonly busyWindowMs: number;
}

export const DEFAULT_RATE: RatePolicy = { maxBytesPerSecond: Infinity, busyBytesPerSecond: 16 * 1024 * 1024, busyWindowMs: 100 };

export class RateLimiter {
  private tokens = 0;
  private last = performance.now();
  private lastClientIo = -Infinity;
  private readonly queue: Array<{ bytes: number; go: () => void }> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private policy: RatePolicy,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.last = now();
  }

  setPolicy(p: RatePolicy): void {
    this.policy = p;
  }

  /** A client request touched the volume. */
  clientIo(): void {
    this.lastClientIo = this.now();
  }

  /** Clients did I/O on the volume within the busy window. */
  get busy(): boolean {
    return this.now() - this.lastClientIo < this.policy.busyWindowMs;
  }

  /** The rate that applies now. */
  get currentRate(): number {
    return this.busy ? Math.min(this.policy.busyBytesPerSecond, this.policy.maxBytesPerSecond) : this.policy.maxBytesPerSecond;
  }

  /** Calls `go` once `bytes` may be moved (at once when the budget allows). */
  take(bytes: number, go: () => void): void {
    this.queue.push({ bytes, go });
    this.drain();
  }

  /** Drops waiting callbacks (the copy they belonged to was abandoned). */
  cancel(): void {
    this.queue.length = 0;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private drain(): void {
    if (this.timer) return;
    const rate = this.currentRate;
    const t = this.now();
    if (rate === Infinity) {
      this.tokens = 0;
      this.last = t;
      for (const w of this.queue.splice(0)) w.go();
      return;
    }
    // A tenth of a second of burst at most, so a quiet moment does not turn into a flood that
    // client requests then queue behind.
    this.tokens = Math.min(this.tokens + ((t - this.last) / 1000) * rate, Math.max(rate / 10, this.queue[0]?.bytes ?? 0));
    this.last = t;
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      if (this.tokens < head.bytes) {
        const waitMs = Math.max(1, Math.min(((head.bytes - this.tokens) / rate) * 1000, this.policy.busyWindowMs));
        this.timer = setTimeout(() => {
          this.timer = undefined;
          this.drain();
        }, waitMs);
        return;
      }
      this.tokens -= head.bytes;
      this.queue.shift();
      head.go();
    }
  }
}
