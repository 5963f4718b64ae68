// Misuse of the hot path (a slot released twice, an index out of range, a bad block size…)
// throws one error class with a stable code, so callers and tests can tell the cases apart.

export type HotpathErrorCode =
  | 'HOTPATH_OUT_OF_MEMORY'
  | 'HOTPATH_MEMORY_GREW'
  | 'HOTPATH_RANGE'
  | 'HOTPATH_BLOCK_SIZE'
  | 'HOTPATH_NOT_WASM_MEMORY'
  | 'HOTPATH_DOUBLE_RELEASE'
  | 'HOTPATH_SIZE_MISMATCH';

export class HotpathError extends Error {
  constructor(
    readonly code: HotpathErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'HotpathError';
  }
}
