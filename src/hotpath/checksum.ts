// XXH3-64 digests of data in WASM memory: single buffers and batches of equal blocks (one call
// for the whole batch, digests written into a DigestList in WASM memory — no per-block BigInt).
import { HotpathError } from './errors.js';
import type { DigestList } from './digests.js';
import type { HotpathMemory } from './memory.js';

export const MIN_BLOCK = 512;
export const MAX_BLOCK = 1024 * 1024;

export function checkBlockSize(blockSize: number): void {
  if (!Number.isInteger(blockSize) || blockSize < MIN_BLOCK || blockSize > MAX_BLOCK || (blockSize & (blockSize - 1)) !== 0) {
    throw new HotpathError('HOTPATH_BLOCK_SIZE', `block size ${blockSize} must be a power of two from ${MIN_BLOCK} to ${MAX_BLOCK}`);
  }
}

/** Offset in WASM memory of `buf`, which must be a view of it (a slot or a region). */
export function wasmOffset(mem: HotpathMemory, buf: Uint8Array): number {
  const off = mem.offsetOf(buf);
  if (off < 0) throw new HotpathError('HOTPATH_NOT_WASM_MEMORY', 'buffer is not a view of hot-path memory (acquire a slot, or copy into one)');
  return off;
}

export function xxh3(mem: HotpathMemory, buf: Uint8Array): bigint {
  return BigInt.asUintN(64, mem.wasm.xxh3(wasmOffset(mem, buf), buf.length));
}

/** Digests of the consecutive `blockSize` blocks of `buf` into `out` from index `at`. */
export function blockDigests(mem: HotpathMemory, buf: Uint8Array, blockSize: number, out: DigestList, at = 0): number {
  checkBlockSize(blockSize);
  if (buf.length % blockSize !== 0) throw new HotpathError('HOTPATH_RANGE', `buffer length ${buf.length} is not a multiple of the block size ${blockSize}`);
  const count = buf.length / blockSize;
  if (at < 0 || at + count > out.length) throw new HotpathError('HOTPATH_RANGE', `digests ${at}..${at + count} do not fit a list of ${out.length}`);
  mem.wasm.xxh3Blocks(wasmOffset(mem, buf), blockSize, count, out.offset + at * 8);
  return count;
}
