// Dirty bitmap kernels. Format (also the on-disk format): bit i of the bitmap is bit (i & 7) of
// byte (i >> 3), least significant bit first; read as little-endian u64 words, bit i is bit
// (i & 63) of word (i >> 6). The facade pads every bitmap to 16 bytes and never sets bits at or
// past its length, so word and vector reads past the last bit see zeroes.
// Bit positions are u64 inside (a 16 TiB volume at 4 KiB grains has 2^32 bits) and f64 at the
// exports, so JavaScript passes plain numbers instead of BigInts.

// @ts-ignore: decorator
@inline function wordPtr(bm: usize, bit: u64): usize {
  return bm + <usize>((bit >> 6) << 3);
}

/** Sets (value 1) or clears (value 0) bits [start, start + count). */
export function bmFill(bm: usize, startF: f64, countF: f64, value: i32): void {
  const start = <u64>startF;
  const count = <u64>countF;
  if (count == 0) return;
  const end = start + count;
  const firstWord = start >> 6;
  const lastWord = (end - 1) >> 6;
  const headMask: u64 = ~(<u64>0) << (start & 63);
  const tailMask: u64 = ~(<u64>0) >> ((64 - (end & 63)) & 63);
  if (firstWord == lastWord) {
    apply(bm + <usize>(firstWord << 3), headMask & tailMask, value);
    return;
  }
  apply(bm + <usize>(firstWord << 3), headMask, value);
  const from = bm + <usize>((firstWord + 1) << 3);
  const to = bm + <usize>(lastWord << 3);
  memory.fill(from, value ? 0xff : 0, to - from);
  apply(to, tailMask, value);
}

// @ts-ignore: decorator
@inline function apply(p: usize, mask: u64, value: i32): void {
  const w = load<u64>(p);
  store<u64>(p, value ? w | mask : w & ~mask);
}

/** Number of set bits in [start, start + count). */
export function bmCount(bm: usize, startF: f64, countF: f64): f64 {
  const start = <u64>startF;
  const count = <u64>countF;
  if (count == 0) return 0;
  const end = start + count;
  const firstWord = start >> 6;
  const lastWord = (end - 1) >> 6;
  const headMask: u64 = ~(<u64>0) << (start & 63);
  const tailMask: u64 = ~(<u64>0) >> ((64 - (end & 63)) & 63);
  if (firstWord == lastWord) return <f64>popcnt<u64>(load<u64>(bm + <usize>(firstWord << 3)) & headMask & tailMask);
  let total = popcnt<u64>(load<u64>(bm + <usize>(firstWord << 3)) & headMask);
  let p = bm + <usize>((firstWord + 1) << 3);
  const to = bm + <usize>(lastWord << 3);
  // Vector popcount: i8x16.popcnt per byte, widened and summed every 16 bytes.
  let acc = i64x2.splat(0);
  while (p + 16 <= to) {
    const bytes = i8x16.popcnt(v128.load(p));
    const halves = i16x8.extadd_pairwise_i8x16_u(bytes);
    const quads = i32x4.extadd_pairwise_i16x8_u(halves);
    acc = i64x2.add(acc, i64x2.extend_low_i32x4_u(quads));
    acc = i64x2.add(acc, i64x2.extend_high_i32x4_u(quads));
    p += 16;
  }
  total += i64x2.extract_lane(acc, 0) + i64x2.extract_lane(acc, 1);
  while (p < to) {
    total += popcnt<u64>(load<u64>(p));
    p += 8;
  }
  return <f64>(total + popcnt<u64>(load<u64>(to) & tailMask));
}

/** First set bit in [from, end), or end if none. Skips empty space 128 bits at a time. */
function nextSet(bm: usize, from: u64, end: u64): u64 {
  if (from >= end) return end;
  let word = from >> 6;
  let w = load<u64>(wordPtr(bm, from)) & (~(<u64>0) << (from & 63));
  const lastWord = (end - 1) >> 6;
  while (w == 0) {
    word++;
    if (word > lastWord) return end;
    // Aligned to 16 bytes: skip whole empty vectors.
    if ((word & 1) == 0) {
      while (word + 1 <= lastWord && !v128.any_true(v128.load(bm + <usize>(word << 3)))) word += 2;
      if (word > lastWord) return end;
    }
    w = load<u64>(bm + <usize>(word << 3));
  }
  const bit = (word << 6) + ctz<u64>(w);
  return bit < end ? bit : end;
}

/** First clear bit in [from, end), or end if none. */
function nextClear(bm: usize, from: u64, end: u64): u64 {
  if (from >= end) return end;
  let word = from >> 6;
  let w = ~load<u64>(wordPtr(bm, from)) & (~(<u64>0) << (from & 63));
  const lastWord = (end - 1) >> 6;
  while (w == 0) {
    word++;
    if (word > lastWord) return end;
    if ((word & 1) == 0) {
      const ones = i64x2.splat(-1);
      while (word + 1 <= lastWord && i64x2.all_true(i64x2.eq(v128.load(bm + <usize>(word << 3)), ones))) word += 2;
      if (word > lastWord) return end;
    }
    w = ~load<u64>(bm + <usize>(word << 3));
  }
  const bit = (word << 6) + ctz<u64>(w);
  return bit < end ? bit : end;
}

/**
 * Runs of set bits in [from, end): writes (start, length) pairs as f64 to `out`, at most
 * `maxRuns`; returns how many. A run cut by `end` ends there.
 */
export function bmRuns(bm: usize, fromF: f64, endF: f64, out: usize, maxRuns: u32): u32 {
  const end = <u64>endF;
  let n: u32 = 0;
  let pos = <u64>fromF;
  while (n < maxRuns) {
    const start = nextSet(bm, pos, end);
    if (start >= end) break;
    const stop = nextClear(bm, start, end);
    store<f64>(out + (<usize>n << 4), <f64>start);
    store<f64>(out + (<usize>n << 4) + 8, <f64>(stop - start));
    n++;
    pos = stop;
  }
  return n;
}

/** dst |= src over `bytes` bytes (both padded to 16). */
export function bmOr(dst: usize, src: usize, bytes: usize): void {
  for (let i: usize = 0; i < bytes; i += 16) v128.store(dst + i, v128.or(v128.load(dst + i), v128.load(src + i)));
}

/** First set bit in [from, end), or end. */
export function bmNextSet(bm: usize, from: f64, end: f64): f64 {
  return <f64>nextSet(bm, <u64>from, <u64>end);
}

/** First clear bit in [from, end), or end. */
export function bmNextClear(bm: usize, from: f64, end: f64): f64 {
  return <f64>nextClear(bm, <u64>from, <u64>end);
}
