import { describe, expect, it } from 'vitest';
import { IoBudget } from '../../src/server/io-budget.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const limits = { limit: 16 * MiB, guaranteed: 256 * KiB, share: 8 * MiB, maxRequests: 4 };

/** Resolves after the budget's wake-up turn (setImmediate) has run. */
const nextTurn = () => new Promise((r) => setImmediate(r));

describe('IoBudget', () => {
  it('a connection holds at most its share, or one larger request alone, and at most maxRequests', () => {
    const b = new IoBudget(limits);
    const a = b.account(() => undefined);
    expect(a.tryCharge(12 * MiB)).toBe(true); // alone: allowed though over the share
    expect(a.tryCharge(4 * KiB)).toBe(false); // not beside it
    a.release(12 * MiB);
    for (let i = 0; i < 4; i++) expect(a.tryCharge(1 * KiB)).toBe(true);
    expect(a.tryCharge(1 * KiB)).toBe(false); // maxRequests
    expect(b.inUse).toBe(0); // all within the guarantee
  });

  it('small requests go on from the guarantee while others hold the whole pool', () => {
    const b = new IoBudget(limits);
    const hog1 = b.account(() => undefined);
    const hog2 = b.account(() => undefined);
    expect(hog1.tryCharge(8 * MiB + 256 * KiB)).toBe(true);
    expect(hog2.tryCharge(8 * MiB + 256 * KiB)).toBe(true);
    expect(b.inUse).toBe(16 * MiB);
    const small = b.account(() => undefined);
    expect(small.tryCharge(64 * KiB)).toBe(true);
    expect(small.tryCharge(1 * MiB)).toBe(false); // needs the pool: waits
    expect(b.waiting).toBe(1);
  });

  it('the pool is handed out first come, first served: a waiting large request is not overtaken', async () => {
    const b = new IoBudget(limits);
    const woken: string[] = [];
    const holder = b.account(() => undefined);
    expect(holder.tryCharge(8 * MiB)).toBe(true); // 7.75 MiB of pool
    const big = b.account(() => woken.push('big'));
    expect(big.tryCharge(12 * MiB)).toBe(false); // needs 11.75 MiB, 8.25 free: queued
    const late = b.account(() => woken.push('late'));
    expect(late.tryCharge(2 * MiB)).toBe(false); // would fit, but big waits first
    holder.release(8 * MiB);
    await nextTurn();
    expect(woken).toEqual(['big', 'late']);
  });

  it('a closed connection leaves the queue', async () => {
    const b = new IoBudget(limits);
    const holder = b.account(() => undefined);
    holder.tryCharge(8 * MiB);
    const gone = b.account(() => expect.fail('a closed account must not be woken'));
    expect(gone.tryCharge(12 * MiB)).toBe(false);
    gone.close();
    expect(b.waiting).toBe(0);
    holder.release(8 * MiB);
    await nextTurn();
  });
});
