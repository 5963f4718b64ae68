// Online verify: compares every block of a volume on both nodes by XXH3 digest while clients
// keep working, paced by the rate limiter.
//
// For each 1 MiB chunk this node (the verifier) asks the peer for its block digests, then reads
// and digests its own copy when the answer arrives, and compares (WASM diff). The peer computes
// its digests after every earlier write to the range is on its disk, and holds later writes
// until it has read. A write can still make the copies differ for a moment: so, from the
// request until our own read, every write to the chunk that is in flight here, starts here or
// arrives from the peer "touches" its blocks, and a difference in a touched block proves
// nothing: that block is checked again later. A difference in an untouched block is real.
// (Every peer write the peer's digests include was sent before its answer, so it reached us
// inside the window, or was already on our disk.)
import type { RateLimiter } from './rate-limit.js';
import { COMPARE_CHUNK, type BlockComparer } from './block-compare.js';

export interface ByteRange {
  offset: number;
  length: number;
}

export interface VerifyHooks {
  readonly size: number;
  readonly blockSize: number;
  readonly comparer: BlockComparer;
  readonly rate: RateLimiter;
  /** Sends the digest request for a chunk; false when the peer is gone. */
  requestDigests(id: bigint, offset: number, length: number): boolean;
  /** Ranges of writes in flight here now that overlap [offset, end). */
  inFlight(offset: number, end: number): Array<[number, number]>;
  /** Reads our copy of a range; empty data for a hole (zeros, not read). */
  readLocal(offset: number, length: number, done: (err: Error | null, data: Buffer) => void): void;
  releaseLocal(data: Buffer): void;
  nextId(): bigint;
}

export interface VerifyReport {
  totalBytes: number;
  doneBytes: number;
  outOfSyncBytes: number;
  ranges: ByteRange[];
  /** Blocks written so constantly that they could not be compared within the retry limit. */
  unverifiedBytes: number;
  /** Chunks (or blocks) compared again because a write touched them. */
  rechecks: number;
  /** Bytes of this node's copy compared as holes (a thin volume's unallocated ranges): not read. */
  holeBytes: number;
}

/** Chunk requests in flight at once. */
const WINDOW = 4;
/** A block touched by writes on this many checks in a row is reported as unverified. */
const MAX_CHECKS = 20;

interface Open {
  offset: number;
  length: number;
  checks: number;
  touched: Array<[number, number]>;
}

export class VerifyRun {
  readonly report: VerifyReport;
  private readonly queue: Array<{ offset: number; length: number; checks: number }> = [];
  private readonly open = new Map<bigint, Open>();
  private waitingForRate = 0;
  private finished = false;

  constructor(
    private readonly h: VerifyHooks,
    private readonly done: (err: Error | null, report: VerifyReport) => void,
  ) {
    this.report = { totalBytes: h.size, doneBytes: 0, outOfSyncBytes: 0, ranges: [], unverifiedBytes: 0, rechecks: 0, holeBytes: 0 };
    for (let off = 0; off < h.size; off += COMPARE_CHUNK) this.queue.push({ offset: off, length: Math.min(COMPARE_CHUNK, h.size - off), checks: 0 });
  }

  start(): void {
    this.pump();
  }

  /** A write to [offset, end) started or arrived here: it touches open chunks. */
  touch(offset: number, end: number): void {
    for (const o of this.open.values()) {
      if (end > o.offset && offset < o.offset + o.length) o.touched.push([Math.max(offset, o.offset), Math.min(end, o.offset + o.length)]);
    }
  }

  /** The peer's digests for a chunk. */
  onDigests(id: bigint, digests: Buffer): void {
    const o = this.open.get(id);
    if (!o || this.finished) return;
    const copy = Buffer.from(digests); // the frame body is given back when this returns
    this.h.readLocal(o.offset, o.length, (err, data) => {
      this.open.delete(id);
      if (err) {
        this.h.releaseLocal(data);
        return this.fail(new Error(`reading the local copy at ${o.offset} failed: ${err.message}`));
      }
      if (data.length === 0) this.report.holeBytes += o.length;
      let runs: ReturnType<BlockComparer['differing']>;
      try {
        runs = this.h.comparer.differing(data, copy, o.length);
      } finally {
        this.h.releaseLocal(data);
      }
      this.settle(o, runs);
      this.pump();
    });
  }

  /** The peer link is gone: the run ends with what it found so far. */
  abort(reason: string): void {
    this.fail(new Error(reason));
  }

  private pump(): void {
    if (this.finished) return;
    while (this.open.size + this.waitingForRate < WINDOW && this.queue.length > 0) {
      const next = this.queue.shift()!;
      this.waitingForRate++;
      this.h.rate.take(next.length, () => {
        this.waitingForRate--;
        if (this.finished) return;
        const id = this.h.nextId();
        const o: Open = { ...next, touched: this.h.inFlight(next.offset, next.offset + next.length) };
        this.open.set(id, o);
        if (!this.h.requestDigests(id, o.offset, o.length)) this.fail(new Error('peer link lost during verify'));
      });
    }
    if (this.queue.length === 0 && this.open.size === 0 && this.waitingForRate === 0) {
      this.finished = true;
      this.report.ranges = mergeRanges(this.report.ranges);
      this.done(null, this.report);
    }
  }

  /** Sorts a chunk's differing runs into real differences and blocks to check again. */
  private settle(o: Open, runs: ReadonlyArray<{ start: number; length: number }>): void {
    const bs = this.h.blockSize;
    let recheckBytes = 0;
    for (const r of runs) {
      for (let b = r.start; b < r.start + r.length; b++) {
        const from = o.offset + b * bs;
        const to = Math.min(from + bs, o.offset + o.length);
        if (!o.touched.some(([x, y]) => y > from && x < to)) {
          this.report.ranges.push({ offset: from, length: to - from });
          this.report.outOfSyncBytes += to - from;
        } else if (o.checks + 1 >= MAX_CHECKS) {
          this.report.unverifiedBytes += to - from;
        } else {
          this.queue.push({ offset: from, length: to - from, checks: o.checks + 1 });
          recheckBytes += to - from;
        }
      }
    }
    if (recheckBytes > 0) this.report.rechecks++;
    // Rechecked blocks count as done once, when first settled.
    if (o.checks === 0) this.report.doneBytes += o.length;
  }

  private fail(err: Error): void {
    if (this.finished) return;
    this.finished = true;
    this.report.ranges = mergeRanges(this.report.ranges);
    this.done(err, this.report);
  }
}

/** Sorted, with touching ranges joined. */
export function mergeRanges(ranges: readonly ByteRange[]): ByteRange[] {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  const out: ByteRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ ...r });
  }
  return out;
}
