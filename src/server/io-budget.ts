// A byte budget shared by every connection of a server: payloads and read replies in flight
// count against it, and a connection stops reading new requests while it is spent. This is what
// keeps memory flat when many clients push large writes at once (backpressure, not buffering).

export class IoBudget {
  private used = 0;
  private waiters = new Set<() => void>();

  constructor(readonly limit: number) {}

  get inUse(): number {
    return this.used;
  }

  exhausted(): boolean {
    return this.used >= this.limit;
  }

  take(bytes: number): void {
    this.used += bytes;
  }

  give(bytes: number): void {
    this.used -= bytes;
    if (this.waiters.size > 0 && !this.exhausted()) {
      const waiters = this.waiters;
      this.waiters = new Set();
      for (const w of waiters) w();
    }
  }

  /** Calls `fn` once, the next time bytes are given back while the budget is not spent. */
  whenAvailable(fn: () => void): void {
    this.waiters.add(fn);
  }
}
