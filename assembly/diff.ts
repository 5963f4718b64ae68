// Comparing two digest lists (u64 per block): which blocks differ. Mostly-equal lists are the
// common case (verify, checksum resync), so equal stretches are skipped eight digests at a time.

/** First index in [from, n) where a[i] != b[i], or n. */
export function diffNext(a: usize, b: usize, from: u32, n: u32): u32 {
  let i = from;
  // Unaligned starts are fine: v128 loads have no alignment requirement.
  // Eight digests (64 bytes of each list) per test while they are equal.
  while (i + 8 <= n) {
    const pa = a + (<usize>i << 3);
    const pb = b + (<usize>i << 3);
    const x0 = v128.or(v128.xor(v128.load(pa), v128.load(pb)), v128.xor(v128.load(pa, 16), v128.load(pb, 16)));
    const x1 = v128.or(v128.xor(v128.load(pa, 32), v128.load(pb, 32)), v128.xor(v128.load(pa, 48), v128.load(pb, 48)));
    if (v128.any_true(v128.or(x0, x1))) break;
    i += 8;
  }
  while (i < n && load<u64>(a + (<usize>i << 3)) == load<u64>(b + (<usize>i << 3))) i++;
  return i;
}

/** First index in [from, n) where a[i] == b[i], or n. */
function sameNext(a: usize, b: usize, from: u32, n: u32): u32 {
  let i = from;
  while (i < n && load<u64>(a + (<usize>i << 3)) != load<u64>(b + (<usize>i << 3))) i++;
  return i;
}

/** Runs of differing indices from `from`: (start, length) u32 pairs to `out`, at most maxRuns. */
export function diffRuns(a: usize, b: usize, from: u32, n: u32, out: usize, maxRuns: u32): u32 {
  let count: u32 = 0;
  let i = from;
  while (count < maxRuns) {
    const start = diffNext(a, b, i, n);
    if (start >= n) break;
    const stop = sameNext(a, b, start, n);
    store<u32>(out + (<usize>count << 3), start);
    store<u32>(out + (<usize>count << 3) + 4, stop - start);
    count++;
    i = stop;
  }
  return count;
}

/** Sets bit i of the bitmap `bm` (format of bitmap.ts) for every i < n where a[i] != b[i]. */
export function diffBitmap(a: usize, b: usize, n: u32, bm: usize): u32 {
  let differing: u32 = 0;
  let i = diffNext(a, b, 0, n);
  while (i < n) {
    store<u8>(bm + (i >> 3), load<u8>(bm + (i >> 3)) | (<u8>1 << <u8>(i & 7)));
    differing++;
    i = diffNext(a, b, i + 1, n);
  }
  return differing;
}
