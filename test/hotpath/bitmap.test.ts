// The WASM dirty bitmap against the plain reference, under random operation sequences.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/index.js';
import { RefBitmap } from './reference.js';

const MAX_BITS = 2000;
const hot = Hotpath.create({ bitmaps: Array(400).fill(MAX_BITS) });

type Op =
  | { kind: 'set' | 'clear'; start: number; count: number }
  | { kind: 'check'; start: number; count: number };

function ops(bits: number): fc.Arbitrary<Op[]> {
  const range = fc.integer({ min: 0, max: bits }).chain((start) => fc.record({ start: fc.constant(start), count: fc.integer({ min: 0, max: bits - start }) }));
  return fc.array(
    fc.tuple(fc.constantFrom('set', 'clear', 'check'), range).map(([kind, r]) => ({ kind, ...r }) as Op),
    { maxLength: 30 },
  );
}

describe('DirtyBitmap (WASM) vs reference', () => {
  it('set / clear / count / any / all / runs agree on random sequences', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: MAX_BITS }).chain((bits) => fc.tuple(fc.constant(bits), ops(bits), fc.integer({ min: 0, max: bits }), fc.integer({ min: 1, max: 50 }))),
        ([bits, seq, from, maxRuns]) => {
          const bm = hot.bitmap(bits);
          const ref = new RefBitmap(bits);
          for (const op of seq) {
            if (op.kind === 'set') (bm.set(op.start, op.count), ref.fill(op.start, op.count, true));
            else if (op.kind === 'clear') (bm.clear(op.start, op.count), ref.fill(op.start, op.count, false));
            else {
              const c = ref.count(op.start, op.count);
              expect(bm.count(op.start, op.count)).toBe(c);
              expect(bm.any(op.start, op.count)).toBe(c > 0);
              expect(bm.all(op.start, op.count)).toBe(c === op.count);
            }
          }
          expect(bm.serialize()).toEqual(Buffer.from(ref.bytes));
          expect(bm.runs(from, maxRuns)).toEqual(ref.runs(from, maxRuns));
          expect(bm.count()).toBe(ref.count(0, bits));
        },
      ),
      { numRuns: 150, seed: 42 },
    );
  });

  it('merge (OR), serialize and load round-trip', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: MAX_BITS }).chain((bits) => fc.tuple(fc.constant(bits), ops(bits), ops(bits))), ([bits, s1, s2]) => {
        const [a, b] = [hot.bitmap(bits), hot.bitmap(bits)];
        const [ra, rb] = [new RefBitmap(bits), new RefBitmap(bits)];
        for (const op of s1) if (op.kind !== 'check') (a[op.kind](op.start, op.count), ra.fill(op.start, op.count, op.kind === 'set'));
        for (const op of s2) if (op.kind !== 'check') (b[op.kind](op.start, op.count), rb.fill(op.start, op.count, op.kind === 'set'));
        a.merge(b);
        ra.or(rb);
        expect(a.serialize()).toEqual(Buffer.from(ra.bytes));
        const c = hot.bitmap(bits);
        c.load(a.serialize());
        expect(c.runs()).toEqual(ra.runs(0, Infinity));
      }),
      { numRuns: 100, seed: 7 },
    );
  });

  it('documents the format: bit i is bit (i & 7) of byte (i >> 3), LSB first', () => {
    const bm = hot.bitmap(20);
    bm.set(0);
    bm.set(9);
    bm.set(19);
    expect([...bm.serialize()]).toEqual([0b0000_0001, 0b0000_0010, 0b0000_1000]);
  });

  it('handles large bitmaps and long runs across vector boundaries', () => {
    const big = Hotpath.create({ bitmaps: [1 << 24] });
    const bm = big.bitmap(1 << 24);
    bm.set(100, 1_000_000);
    bm.set((1 << 24) - 5, 5);
    expect(bm.runs()).toEqual([
      { start: 100, length: 1_000_000 },
      { start: (1 << 24) - 5, length: 5 },
    ]);
    expect(bm.count()).toBe(1_000_005);
    expect(bm.all(100, 1_000_000)).toBe(true);
    expect(bm.any(2_000_000, 1_000_000)).toBe(false);
  });

  it('misuse throws with stable codes', () => {
    const bm = hot.bitmap(64);
    expect(() => bm.set(60, 5)).toThrow(expect.objectContaining({ code: 'HOTPATH_RANGE' }));
    expect(() => bm.merge(hot.bitmap(65))).toThrow(expect.objectContaining({ code: 'HOTPATH_SIZE_MISMATCH' }));
    expect(() => bm.load(Buffer.alloc(9))).toThrow(expect.objectContaining({ code: 'HOTPATH_SIZE_MISMATCH' }));
    expect(() => hot.bitmap(0)).toThrow(expect.objectContaining({ code: 'HOTPATH_RANGE' }));
  });
});
