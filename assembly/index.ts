// The hot-path kernels. Memory layout is owned by the TypeScript facade (src/hotpath/): these
// functions only read and write the regions they are given. Nothing here allocates.
export { xxh3, xxh3Blocks } from './xxh3';
export { bmFill, bmCount, bmNextSet, bmNextClear, bmRuns, bmOr } from './bitmap';
export { diffNext, diffRuns, diffBitmap } from './diff';
export { isZero } from './zero';

/** Where the facade may start laying out regions (after static data). */
export function heapBase(): usize {
  return __heap_base;
}
