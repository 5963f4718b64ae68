// The resync/verify pacer with a hand-driven clock: the maximum rate holds, client I/O drops the
// rate to the busy rate, and an unlimited policy lets everything through at once.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { RateLimiter } from '../../src/replication/rate-limit.js';

const MiB = 2 ** 20;
afterEach(() => vi.useRealTimers());

describe('RateLimiter', () => {
  it('lets no more than the maximum rate through, and everything when unlimited', () => {
    vi.useFakeTimers();
    let t = 0;
    const lim = new RateLimiter({ maxBytesPerSecond: 10 * MiB, busyBytesPerSecond: MiB, busyWindowMs: 100 }, () => t);
    let done = 0;
    for (let i = 0; i < 30; i++) lim.take(MiB, () => done++);
    expect(done).toBe(0); // no burst credit at start
    for (let step = 0; step < 10; step++) {
      t += 100;
      vi.advanceTimersByTime(100);
    }
    expect(done).toBeGreaterThanOrEqual(9);
    expect(done).toBeLessThanOrEqual(11); // ~10 MiB in one second
    const free = new RateLimiter({ maxBytesPerSecond: Infinity, busyBytesPerSecond: Infinity, busyWindowMs: 100 }, () => t);
    let n = 0;
    for (let i = 0; i < 100; i++) free.take(MiB, () => n++);
    expect(n).toBe(100);
  });

  it('falls to the busy rate while clients do I/O, and back when they stop', () => {
    vi.useFakeTimers();
    let t = 0;
    const lim = new RateLimiter({ maxBytesPerSecond: 100 * MiB, busyBytesPerSecond: 2 * MiB, busyWindowMs: 100 }, () => t);
    expect(lim.currentRate).toBe(100 * MiB);
    lim.clientIo();
    expect(lim.currentRate).toBe(2 * MiB);
    let done = 0;
    for (let i = 0; i < 50; i++) lim.take(MiB, () => done++);
    for (let step = 0; step < 10; step++) {
      t += 100;
      lim.clientIo(); // clients stay busy for a second
      vi.advanceTimersByTime(100);
    }
    expect(done).toBeLessThanOrEqual(3);
    t += 200; // idle now
    for (let step = 0; step < 5; step++) {
      t += 100;
      vi.advanceTimersByTime(100);
    }
    expect(done).toBeGreaterThan(30);
  });
});
