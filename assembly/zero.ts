// Zero detection for thin volumes: an all-zero write frees (or never allocates) a unit, as
// DataCore reclaims zero-filled allocation units. Four v128 lanes OR-ed per step, so the loop
// runs at memory speed and stops at the first non-zero 64 bytes (most data is not zero).

/** True when the `len` bytes at `ptr` are all zero. */
export function isZero(ptr: usize, len: usize): bool {
  const end = ptr + len;
  let p = ptr;
  while (p + 64 <= end) {
    const x = v128.or(v128.or(v128.load(p), v128.load(p, 16)), v128.or(v128.load(p, 32), v128.load(p, 48)));
    if (v128.any_true(x)) return false;
    p += 64;
  }
  while (p < end) {
    if (load<u8>(p) != 0) return false;
    p++;
  }
  return true;
}
