// WASM memory is sized once; slots are views of it; misuse is caught.
import { describe, expect, it } from 'vitest';
import { Hotpath, HotpathError } from '../../src/hotpath/index.js';
import { instantiate } from '../../src/hotpath/wasm.js';

describe('hot-path memory and slots', () => {
  it('the module exports every kernel the facade uses', () => {
    const names = Object.keys(instantiate()).sort();
    expect(names).toEqual(
      ['bmCount', 'bmFill', 'bmNextClear', 'bmNextSet', 'bmOr', 'bmRuns', 'diffBitmap', 'diffNext', 'diffRuns', 'heapBase', 'isZero', 'memory', 'xxh3', 'xxh3Blocks'].sort(),
    );
  });

  it('hands out slots that are views of WASM memory, reused after release', () => {
    const hot = Hotpath.create({ slotArenaBytes: 4 << 20 });
    const a = hot.slots.acquire(1 << 20);
    expect(a.length).toBe(1 << 20);
    a.fill(0xab);
    expect(hot.xxh3(a)).toBe(hot.xxh3(a)); // hashed in place
    hot.slots.release(a);
    const b = hot.slots.acquire(1000 * 1000);
    expect(b.byteOffset).toBe(a.byteOffset);
    expect(hot.slots.slotsInUse).toBe(1);
    hot.slots.release(b);
  });

  it('falls back to ordinary buffers when the arena is spent or the request is small', () => {
    const hot = Hotpath.create({ slotArenaBytes: 1 << 20 });
    const slot = hot.slots.acquire(1 << 20);
    const extra = hot.slots.acquire(1 << 20);
    const small = hot.slots.acquire(100);
    expect(() => hot.xxh3(extra)).toThrow(expect.objectContaining({ code: 'HOTPATH_NOT_WASM_MEMORY' }));
    expect(() => hot.xxh3(small)).toThrow(HotpathError);
    hot.slots.release(extra); // no-op
    hot.slots.release(slot);
  });

  it('a slot released twice throws', () => {
    const hot = Hotpath.create({ slotArenaBytes: 1 << 20 });
    const s = hot.slots.acquire(65536);
    hot.slots.release(s);
    expect(() => hot.slots.release(s)).toThrow(expect.objectContaining({ code: 'HOTPATH_DOUBLE_RELEASE' }));
  });

  it('never grows: asking for more than was sized throws instead', () => {
    const hot = Hotpath.create({ bitmaps: [1024] });
    hot.bitmap(1024);
    expect(() => hot.digestList(10 << 20)).toThrow(expect.objectContaining({ code: 'HOTPATH_OUT_OF_MEMORY' }));
  });

  it('a bitmap given back is reused, neighbours merge, and giving one back twice is refused', () => {
    // Room for two bitmaps of 1 Mi bits (128 KiB each), no more: volumes deleted and created online.
    const hot = Hotpath.create({ bitmaps: [2 ** 20, 2 ** 20] });
    const a = hot.bitmap(2 ** 20);
    const b = hot.bitmap(2 ** 20);
    expect(() => hot.bitmap(2 ** 20)).toThrow(HotpathError);
    a.set(5, 10);
    a.release();
    b.release();
    expect(() => a.release()).toThrow(/no region/);
    // Both holes merged: one bitmap of twice the size fits where the two were, and starts clear.
    const big = hot.bitmap(2 ** 21);
    expect(big.offset).toBe(a.offset);
    expect(big.count()).toBe(0);
    big.release();
    const c = hot.bitmap(2 ** 20);
    const d = hot.digestList(1000);
    expect(c.offset).toBe(a.offset);
    expect(d.offset).toBeGreaterThan(c.offset);
    expect(c.count()).toBe(0);
  });
});
