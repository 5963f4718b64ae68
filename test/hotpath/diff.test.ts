// Digest-list diffing in WASM against the reference.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/index.js';
import { refDiffRuns } from './reference.js';

const hot = Hotpath.create({ digests: 2 * 200 * 600, digestLists: 400, bitmaps: Array(200).fill(600) });

describe('diff of digest lists (WASM) vs reference', () => {
  it('lists the runs of differing indices, from any start, at most N', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 600 }).chain((n) =>
          fc.tuple(fc.array(fc.bigInt({ min: 0n, max: 3n }), { minLength: n, maxLength: n }), fc.array(fc.integer({ min: 0, max: Math.max(0, n - 1) }), { maxLength: 40 }), fc.integer({ min: 0, max: n }), fc.integer({ min: 1, max: 20 })),
        ),
        ([values, changes, from, max]) => {
          const n = values.length;
          const a = hot.digestList(n);
          const b = hot.digestList(n);
          a.values.set(values);
          b.values.set(values);
          for (const i of changes) if (n > 0) b.values[i] = b.values[i]! ^ 0x8000_0000_0000_0000n;
          expect(hot.diffRuns(a, b, from, max)).toEqual(refDiffRuns(a.values, b.values, from, max));
          const bm = hot.bitmap(Math.max(n, 1));
          const differing = hot.diffIntoBitmap(a, b, bm);
          expect(differing).toBe(refDiffRuns(a.values, b.values, 0, Infinity).reduce((s, r) => s + r.length, 0));
          expect(bm.runs()).toEqual(refDiffRuns(a.values, b.values, 0, Infinity));
        },
      ),
      { numRuns: 200, seed: 3 },
    );
  });
});
