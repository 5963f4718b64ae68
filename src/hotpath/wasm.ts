// The compiled AssemblyScript module (build/hotpath.wasm), compiled once per process and
// synchronously, so importing code never waits. Each Hotpath instantiates it with its own memory.
import { readFileSync } from 'node:fs';

/** The raw exports, typed. Only src/hotpath/ touches these. */
export interface HotpathExports {
  readonly memory: WebAssembly.Memory;
  heapBase(): number;
  xxh3(ptr: number, len: number): bigint;
  xxh3Blocks(ptr: number, blockSize: number, count: number, out: number): void;
  bmFill(bm: number, start: number, count: number, value: number): void;
  bmCount(bm: number, start: number, count: number): number;
  bmNextSet(bm: number, from: number, end: number): number;
  bmNextClear(bm: number, from: number, end: number): number;
  bmRuns(bm: number, from: number, end: number, out: number, maxRuns: number): number;
  bmOr(dst: number, src: number, bytes: number): void;
  diffNext(a: number, b: number, from: number, n: number): number;
  diffRuns(a: number, b: number, from: number, n: number, out: number, maxRuns: number): number;
  diffBitmap(a: number, b: number, n: number, bm: number): number;
  isZero(ptr: number, len: number): number;
}

// The same relative path works from src/hotpath/ (tests) and build/hotpath/ (compiled).
const wasmUrl = new URL('../../build/hotpath.wasm', import.meta.url);
let compiled: WebAssembly.Module | undefined;

export function instantiate(): HotpathExports {
  compiled ??= new WebAssembly.Module(readFileSync(wasmUrl));
  return new WebAssembly.Instance(compiled, {}).exports as unknown as HotpathExports;
}
