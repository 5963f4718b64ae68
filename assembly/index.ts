// Placeholder: the hot-path kernels (XXH3, bitmaps, diff) land here (issue 3).
export function version(): i32 {
  return 1;
}
