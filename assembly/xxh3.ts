// XXH3-64 (seed 0, default secret), the full algorithm for every length, as xxhash.h defines it.
// The long-input loop (> 240 bytes) is 128-bit SIMD: per 64-byte stripe, four v128 accumulators;
// the 32×32→64 multiply is i64x2.extmul_low/high_i32x4_u (measured fastest, see DESIGN.md).

const PRIME32_1: u64 = 0x9e3779b1;
const PRIME32_2: u64 = 0x85ebca77;
const PRIME32_3: u64 = 0xc2b2ae3d;
const PRIME64_1: u64 = 0x9e3779b185ebca87;
const PRIME64_2: u64 = 0xc2b2ae3d27d4eb4f;
const PRIME64_3: u64 = 0x165667b19e3779f9;
const PRIME64_4: u64 = 0x85ebca77c2b2ae63;
const PRIME64_5: u64 = 0x27d4eb2f165667c5;
const PRIME_MX1: u64 = 0x165667919e3779f9;
const PRIME_MX2: u64 = 0x9fb21c651e98df25;

const SECRET_SIZE: usize = 192;
const STRIPE_LEN: usize = 64;
const STRIPES_PER_BLOCK: usize = (SECRET_SIZE - STRIPE_LEN) / 8; // 16
const BLOCK_LEN: usize = STRIPE_LEN * STRIPES_PER_BLOCK; // 1024

// The default secret (XXH3_kSecret).
const SECRET: usize = memory.data<u8>([
  0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
  0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
  0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
  0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
  0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
  0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
  0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
  0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
  0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
  0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
  0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
  0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
]);

// @ts-ignore: decorator
@inline function r64(p: usize): u64 {
  return load<u64>(p);
}

// @ts-ignore: decorator
@inline function r32(p: usize): u64 {
  return <u64>load<u32>(p);
}

/** Low 64 bits xor high 64 bits of the 128-bit product a·b. */
function mul128fold64(a: u64, b: u64): u64 {
  const aLo = a & 0xffffffff;
  const aHi = a >> 32;
  const bLo = b & 0xffffffff;
  const bHi = b >> 32;
  const loLo = aLo * bLo;
  const hiLo = aHi * bLo;
  const loHi = aLo * bHi;
  const hiHi = aHi * bHi;
  const cross = (loLo >> 32) + (hiLo & 0xffffffff) + loHi;
  const upper = (hiLo >> 32) + (cross >> 32) + hiHi;
  const lower = (cross << 32) | (loLo & 0xffffffff);
  return lower ^ upper;
}

function xxh64Avalanche(h: u64): u64 {
  h ^= h >> 33;
  h *= PRIME64_2;
  h ^= h >> 29;
  h *= PRIME64_3;
  return h ^ (h >> 32);
}

function avalanche(h: u64): u64 {
  h ^= h >> 37;
  h *= PRIME_MX1;
  return h ^ (h >> 32);
}

function rrmxmx(h: u64, len: u64): u64 {
  h ^= rotl<u64>(h, 49) ^ rotl<u64>(h, 24);
  h *= PRIME_MX2;
  h ^= (h >> 35) + len;
  h *= PRIME_MX2;
  return h ^ (h >> 28);
}

// @ts-ignore: decorator
@inline function mix16B(p: usize, s: usize): u64 {
  return mul128fold64(r64(p) ^ r64(s), r64(p + 8) ^ r64(s + 8));
}

function len0to16(p: usize, len: usize): u64 {
  if (len > 8) {
    const lo = r64(p) ^ (r64(SECRET + 24) ^ r64(SECRET + 32));
    const hi = r64(p + len - 8) ^ (r64(SECRET + 40) ^ r64(SECRET + 48));
    const acc = <u64>len + bswap<u64>(lo) + hi + mul128fold64(lo, hi);
    return avalanche(acc);
  }
  if (len >= 4) {
    const in1 = r32(p);
    const in2 = r32(p + len - 4);
    const keyed = (in2 + (in1 << 32)) ^ (r64(SECRET + 8) ^ r64(SECRET + 16));
    return rrmxmx(keyed, <u64>len);
  }
  if (len > 0) {
    const c1 = <u32>load<u8>(p);
    const c2 = <u32>load<u8>(p + (len >> 1));
    const c3 = <u32>load<u8>(p + len - 1);
    const combined = (c1 << 16) | (c2 << 24) | c3 | (<u32>len << 8);
    return xxh64Avalanche(<u64>combined ^ (r32(SECRET) ^ r32(SECRET + 4)));
  }
  return xxh64Avalanche(r64(SECRET + 56) ^ r64(SECRET + 64));
}

function len17to128(p: usize, len: usize): u64 {
  let acc = <u64>len * PRIME64_1;
  if (len > 32) {
    if (len > 64) {
      if (len > 96) {
        acc += mix16B(p + 48, SECRET + 96);
        acc += mix16B(p + len - 64, SECRET + 112);
      }
      acc += mix16B(p + 32, SECRET + 64);
      acc += mix16B(p + len - 48, SECRET + 80);
    }
    acc += mix16B(p + 16, SECRET + 32);
    acc += mix16B(p + len - 32, SECRET + 48);
  }
  acc += mix16B(p, SECRET);
  acc += mix16B(p + len - 16, SECRET + 16);
  return avalanche(acc);
}

function len129to240(p: usize, len: usize): u64 {
  let acc = <u64>len * PRIME64_1;
  for (let i: usize = 0; i < 8; i++) acc += mix16B(p + 16 * i, SECRET + 16 * i);
  acc = avalanche(acc);
  const rounds = len / 16;
  for (let i: usize = 8; i < rounds; i++) acc += mix16B(p + 16 * i, SECRET + 16 * (i - 8) + 3);
  acc += mix16B(p + len - 16, SECRET + 136 - 17);
  return avalanche(acc);
}

// The eight 64-bit accumulators of the long loop, as four vectors. Globals only at the edges:
// accumulate() works on locals and stores them back once.
let g0: v128 = i64x2.splat(0);
let g1: v128 = i64x2.splat(0);
let g2: v128 = i64x2.splat(0);
let g3: v128 = i64x2.splat(0);

/**
 * `n` stripes of 64 bytes from `p`, stripe k keyed by the secret at `s + 8k`:
 *   acc[i^1] += data[i];  acc[i] += lo32(data[i] ^ key[i]) * hi32(data[i] ^ key[i])
 * Two shuffles gather four low and four high halves so one extmul_low and one extmul_high do
 * four multiplies.
 */
function accumulate(p: usize, s: usize, n: usize): void {
  let a0 = g0;
  let a1 = g1;
  let a2 = g2;
  let a3 = g3;
  // Data sums, lane-swapped into the accumulators once at the end (addition is linear, so
  // this equals swapping every stripe, with four shuffles fewer per stripe).
  let s0 = i64x2.splat(0);
  let s1 = i64x2.splat(0);
  let s2 = i64x2.splat(0);
  let s3 = i64x2.splat(0);
  for (let k: usize = 0; k < n; k++) {
    const ip = p + k * STRIPE_LEN;
    const sp = s + k * 8;
    const d0 = v128.load(ip);
    const d1 = v128.load(ip, 16);
    const d2 = v128.load(ip, 32);
    const d3 = v128.load(ip, 48);
    const k0 = v128.xor(d0, v128.load(sp));
    const k1 = v128.xor(d1, v128.load(sp, 16));
    const k2 = v128.xor(d2, v128.load(sp, 32));
    const k3 = v128.xor(d3, v128.load(sp, 48));
    const lo01 = i32x4.shuffle(k0, k1, 0, 2, 4, 6);
    const hi01 = i32x4.shuffle(k0, k1, 1, 3, 5, 7);
    const lo23 = i32x4.shuffle(k2, k3, 0, 2, 4, 6);
    const hi23 = i32x4.shuffle(k2, k3, 1, 3, 5, 7);
    a0 = i64x2.add(a0, i64x2.extmul_low_i32x4_u(lo01, hi01));
    s0 = i64x2.add(s0, d0);
    a1 = i64x2.add(a1, i64x2.extmul_high_i32x4_u(lo01, hi01));
    s1 = i64x2.add(s1, d1);
    a2 = i64x2.add(a2, i64x2.extmul_low_i32x4_u(lo23, hi23));
    s2 = i64x2.add(s2, d2);
    a3 = i64x2.add(a3, i64x2.extmul_high_i32x4_u(lo23, hi23));
    s3 = i64x2.add(s3, d3);
  }
  g0 = i64x2.add(a0, i64x2.shuffle(s0, s0, 1, 0));
  g1 = i64x2.add(a1, i64x2.shuffle(s1, s1, 1, 0));
  g2 = i64x2.add(a2, i64x2.shuffle(s2, s2, 1, 0));
  g3 = i64x2.add(a3, i64x2.shuffle(s3, s3, 1, 0));
}

// @ts-ignore: decorator
@inline function scramble(acc: v128, s: usize): v128 {
  let a = v128.xor(acc, i64x2.shr_u(acc, 47));
  a = v128.xor(a, v128.load(s));
  return i64x2.mul(a, i64x2.splat(PRIME32_1));
}

// @ts-ignore: decorator
@inline function mergePair(acc: v128, s: usize): u64 {
  return mul128fold64(i64x2.extract_lane(acc, 0) ^ r64(s), i64x2.extract_lane(acc, 1) ^ r64(s + 8));
}

function hashLong(p: usize, len: usize): u64 {
  g0 = i64x2(PRIME32_3, PRIME64_1);
  g1 = i64x2(PRIME64_2, PRIME64_3);
  g2 = i64x2(PRIME64_4, PRIME32_2);
  g3 = i64x2(PRIME64_5, PRIME32_1);
  const blocks = (len - 1) / BLOCK_LEN;
  const ss = SECRET + SECRET_SIZE - STRIPE_LEN;
  for (let b: usize = 0; b < blocks; b++) {
    accumulate(p + b * BLOCK_LEN, SECRET, STRIPES_PER_BLOCK);
    g0 = scramble(g0, ss);
    g1 = scramble(g1, ss + 16);
    g2 = scramble(g2, ss + 32);
    g3 = scramble(g3, ss + 48);
  }
  accumulate(p + blocks * BLOCK_LEN, SECRET, (len - 1 - blocks * BLOCK_LEN) / STRIPE_LEN);
  // The last stripe, keyed 7 bytes before the end of the secret's stripe area.
  accumulate(p + len - STRIPE_LEN, ss - 7, 1);
  const ms = SECRET + 11;
  let result = <u64>len * PRIME64_1;
  result += mergePair(g0, ms);
  result += mergePair(g1, ms + 16);
  result += mergePair(g2, ms + 32);
  result += mergePair(g3, ms + 48);
  return avalanche(result);
}

/** XXH3-64 of `len` bytes at `p`. */
export function xxh3(p: usize, len: usize): u64 {
  if (len <= 16) return len0to16(p, len);
  if (len <= 128) return len17to128(p, len);
  if (len <= 240) return len129to240(p, len);
  return hashLong(p, len);
}

/** Hashes `count` consecutive blocks of `blockSize` bytes at `p`, digests (u64 LE) to `out`. */
export function xxh3Blocks(p: usize, blockSize: usize, count: usize, out: usize): void {
  for (let i: usize = 0; i < count; i++) store<u64>(out + i * 8, xxh3(p + i * blockSize, blockSize));
}
