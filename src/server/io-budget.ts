// Request memory of a server, shared fairly between its connections.
//
// Every request in flight holds bytes (a WRITE payload, a READ reply until it is sent, a CACHE
// scratch buffer): its cost. Three limits keep memory flat without letting one connection hurt
// the others (issue 11; nbdkit serves other clients while one never reads its replies):
// - its own share: a connection runs requests while they total at most `share` bytes, or any
//   one request alone, and at most `maxRequests` at once;
// - its guarantee: the first `guaranteed` bytes a connection holds are its own, outside the
//   server pool, so small requests always go on even when stuck connections hold the pool;
// - the server pool: what connections hold beyond their guarantee comes from one pool of
//   `limit` bytes, handed out first come, first served (a large request waiting at the head is
//   not overtaken for ever by smaller ones).
// Memory for requests is therefore at most `limit` + `guaranteed` x connections.

export interface BudgetLimits {
  /** The server pool. At least the largest request, so that one can always be admitted. */
  readonly limit: number;
  /** Bytes each connection holds outside the pool. */
  readonly guaranteed: number;
  /** Bytes one connection may hold, unless a single request is larger. */
  readonly share: number;
  /** Requests one connection may have in flight. */
  readonly maxRequests: number;
}

/** One connection's account. `retry` is called (from a fresh turn of the event loop) when pool bytes it waited for are free. */
export class BudgetAccount {
  /** Bytes held by requests in flight. */
  held = 0;
  requests = 0;
  /** Pool bytes this account waits for, while it is queued. */
  wanted = 0;
  queued = false;
  closed = false;

  constructor(
    private readonly pool: IoBudget,
    readonly retry: () => void,
  ) {}

  /** Admits a request of `cost` bytes if every limit allows it; otherwise false (and, if the pool was short, queues for it). */
  tryCharge(cost: number): boolean {
    const l = this.pool.limits;
    if (this.requests >= l.maxRequests) return false;
    if (this.held > 0 && this.held + cost > l.share) return false;
    const fromPool = excess(this.held + cost, l.guaranteed) - excess(this.held, l.guaranteed);
    if (fromPool > 0 && !this.pool.take(this, fromPool)) return false;
    if (this.queued) this.pool.forget(this); // admitted without the pool bytes it had queued for
    this.held += cost;
    this.requests++;
    return true;
  }

  /** A request of `cost` bytes ended. */
  release(cost: number): void {
    const fromPool = excess(this.held, this.pool.limits.guaranteed) - excess(this.held - cost, this.pool.limits.guaranteed);
    this.held -= cost;
    this.requests--;
    if (fromPool > 0) this.pool.give(fromPool);
  }

  /** The connection is gone: it leaves the queue (requests still in flight release their bytes as they end). */
  close(): void {
    this.closed = true;
    this.pool.forget(this);
  }
}

function excess(held: number, guaranteed: number): number {
  return held > guaranteed ? held - guaranteed : 0;
}

export class IoBudget {
  private used = 0;
  private readonly queue: BudgetAccount[] = [];
  /** The account being woken: it may take pool bytes ahead of the queue once. */
  private turn: BudgetAccount | undefined;
  private wakeScheduled = false;

  constructor(readonly limits: BudgetLimits) {
    if (limits.limit < limits.share) throw new RangeError('the server pool must hold at least one connection share');
  }

  /** Pool bytes held by connections beyond their guarantee. */
  get inUse(): number {
    return this.used;
  }

  /** Connections waiting for pool bytes. */
  get waiting(): number {
    return this.queue.length;
  }

  account(retry: () => void): BudgetAccount {
    return new BudgetAccount(this, retry);
  }

  take(a: BudgetAccount, bytes: number): boolean {
    const first = this.queue.length === 0 || this.turn === a;
    if (first && this.used + bytes <= this.limits.limit) {
      this.used += bytes;
      if (this.turn === a) this.turn = undefined;
      return true;
    }
    a.wanted = bytes;
    if (!a.queued) {
      a.queued = true;
      this.queue.push(a);
    }
    return false;
  }

  give(bytes: number): void {
    this.used -= bytes;
    if (this.queue.length > 0 && !this.wakeScheduled) {
      // Woken from a fresh turn: give() runs inside other connections' completions, and waking
      // a connection there would nest one connection's work inside another's.
      this.wakeScheduled = true;
      setImmediate(this.wake);
    }
  }

  forget(a: BudgetAccount): void {
    if (!a.queued) return;
    a.queued = false;
    this.queue.splice(this.queue.indexOf(a), 1);
  }

  private readonly wake = (): void => {
    this.wakeScheduled = false;
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      if (this.used + head.wanted > this.limits.limit) return; // it waits, and so does everyone behind it
      this.queue.shift();
      head.queued = false;
      this.turn = head;
      try {
        head.retry();
      } finally {
        this.turn = undefined;
      }
    }
  };
}
