// Lists of 64-bit block digests in WASM memory, and finding where two lists differ.
import { HotpathError } from './errors.js';
import type { HotpathMemory } from './memory.js';

export interface IndexRun {
  start: number;
  length: number;
}

export class DigestList {
  readonly offset: number;
  /** The digests, as a view of WASM memory (no copy). */
  readonly values: BigUint64Array;

  constructor(
    private readonly mem: HotpathMemory,
    readonly length: number,
  ) {
    this.offset = mem.alloc(Math.max(length, 1) * 8 + 32);
    mem.assertNotGrown();
    this.values = new BigUint64Array(mem.wasm.memory.buffer, this.offset, length);
  }

  /** Gives its WASM memory back: the list must not be used again. */
  release(): void {
    this.mem.release(this.offset);
  }

  /** The raw bytes (little-endian u64s), e.g. to send to a peer. */
  bytes(): Buffer {
    return this.mem.view(this.offset, this.length * 8);
  }
}

function checkPair(a: DigestList, b: DigestList, from: number): void {
  if (a.length !== b.length) throw new HotpathError('HOTPATH_SIZE_MISMATCH', `digest lists differ in length: ${a.length} vs ${b.length}`);
  if (!Number.isInteger(from) || from < 0 || from > a.length) throw new HotpathError('HOTPATH_RANGE', `start index ${from} outside 0..${a.length}`);
}

/** Runs of indices where the lists differ, from `from`, at most `maxRuns`. */
export function diffRuns(mem: HotpathMemory, scratch: number, scratchRuns: number, a: DigestList, b: DigestList, from = 0, maxRuns = scratchRuns): IndexRun[] {
  checkPair(a, b, from);
  const out: IndexRun[] = [];
  let pos = from;
  while (out.length < maxRuns) {
    const want = Math.min(scratchRuns, maxRuns - out.length);
    const n = mem.wasm.diffRuns(a.offset, b.offset, pos, a.length, scratch, want);
    const u32 = new Uint32Array(mem.wasm.memory.buffer, scratch, n * 2);
    for (let i = 0; i < n; i++) out.push({ start: u32[2 * i]!, length: u32[2 * i + 1]! });
    if (n < want) break;
    const last = out[out.length - 1]!;
    pos = last.start + last.length;
  }
  return out;
}
