// Online verify: compares every block of a volume on both nodes by XXH3 digest while clients
// keep working, paced by the rate limiter.
//
// It walks the volume span by span (up to MAX_HOLES_RANGE): first it asks the peer for its holes
// in the span (answered from its allocation map once every earlier write to the span is on its
// disk; later writes wait for the answer), then looks up its own. A range that is a hole on both
// nodes is all zeros on both: it counts as verified without a digest (skippedHoleBytes). Every
// other range is compared by digests, chunk by chunk — a hole on one side compares as zeros
// against the other's data. The rule that keeps a write from hiding a difference: from the
// holes request until our own lookup, every write to the span in flight here, starting here or
// arriving from the peer touches it, and a touched range is compared, never skipped. (The
// peer's answer includes every write it applied before; those it sent before answering reached
// us inside the window or were already here. A write after our lookup reaches both copies.)
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
import { ProtocolViolation } from '../protocol/errors.js';
import type { RateLimiter } from './rate-limit.js';
import { COMPARE_CHUNK, type BlockComparer } from './block-compare.js';
import { MAX_HOLES_RANGE } from './peer-protocol.js';
import type { HolesAnswer } from './resync-holes.js';

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
  /** Asks the peer for its holes in a span; false when the peer is gone. */
  requestHoles(id: bigint, offset: number, length: number): boolean;
  /** Our own holes from `offset` (whole blocks; the answer may cover less than `length`). */
  localHoles(offset: number, length: number, done: (answer: HolesAnswer) => void): void;
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
  /** Bytes that were holes on both nodes: verified without digests (counted in doneBytes, not in holeBytes). */
  skippedHoleBytes: number;
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

/** The span whose holes were asked of the peer, until our own lookup is done. */
interface OpenSpan {
  id: bigint;
  offset: number;
  length: number;
  touched: Array<[number, number]>;
}

export class VerifyRun {
  readonly report: VerifyReport;
  private readonly queue: Array<{ offset: number; length: number; checks: number }> = [];
  private readonly open = new Map<bigint, Open>();
  private span: OpenSpan | undefined;
  /** Where the next span starts: everything before it is queued, open or settled. */
  private cursor = 0;
  private waitingForRate = 0;
  private finished = false;

  constructor(
    private readonly h: VerifyHooks,
    private readonly done: (err: Error | null, report: VerifyReport) => void,
  ) {
    this.report = { totalBytes: h.size, doneBytes: 0, outOfSyncBytes: 0, ranges: [], unverifiedBytes: 0, rechecks: 0, holeBytes: 0, skippedHoleBytes: 0 };
  }

  start(): void {
    this.pump();
  }

  /** A write to [offset, end) started or arrived here: it touches open chunks. */
  touch(offset: number, end: number): void {
    for (const o of this.open.values()) {
      if (end > o.offset && offset < o.offset + o.length) o.touched.push([Math.max(offset, o.offset), Math.min(end, o.offset + o.length)]);
    }
    const s = this.span;
    if (s && end > s.offset && offset < s.offset + s.length) s.touched.push([offset, end]);
  }

  /**
   * The peer's holes in the span asked (`covered`: the part its answer covers, from the span's
   * start). An answer for no open span (a verify that ended) is dropped; one that does not fit
   * the span asked, or stops inside a block (the next span would not start on one), is a
   * protocol violation.
   */
  onHoles(id: bigint, offset: number, covered: number, holes: HolesAnswer['holes']): void {
    const s = this.span;
    if (!s || s.id !== id || this.finished) return;
    const blockEnd = (offset + covered) % this.h.blockSize === 0 || offset + covered === this.h.size;
    if (offset !== s.offset || covered > s.length || !blockEnd) throw new ProtocolViolation(`VERIFY_HOLES answers ${offset}+${covered} for ${s.offset}+${s.length}`);
    this.h.localHoles(offset, covered, (ours) => {
      this.span = undefined;
      if (this.finished) return;
      const end = offset + Math.min(covered, ours.length);
      const skip = subtractRanges(intersectRanges(holes, ours.holes), s.touched, this.h.blockSize, this.h.size);
      let at = offset;
      for (const k of [...skip, { offset: end, length: 0 }]) {
        const from = Math.min(k.offset, end);
        this.queueCompare(at, from);
        const to = Math.min(k.offset + k.length, end);
        this.report.skippedHoleBytes += Math.max(0, to - from);
        this.report.doneBytes += Math.max(0, to - from);
        at = Math.max(at, to);
      }
      this.cursor = end;
      this.pump();
    });
  }

  /** The peer's holes answer was damaged: asked again (the touched window just grows). */
  askHolesAgain(id: bigint): void {
    const s = this.span;
    if (!s || s.id !== id || this.finished) return;
    if (!this.h.requestHoles(s.id, s.offset, s.length)) this.fail(new Error('peer link lost during verify'));
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

  private queueCompare(from: number, to: number): void {
    for (let off = from; off < to; off += COMPARE_CHUNK) this.queue.push({ offset: off, length: Math.min(COMPARE_CHUNK, to - off), checks: 0 });
  }

  private pump(): void {
    if (this.finished) return;
    // The next span's holes are asked while the chunks of this one are compared.
    if (!this.span && this.cursor < this.h.size && this.queue.length < WINDOW) {
      const offset = this.cursor;
      const length = Math.min(MAX_HOLES_RANGE, this.h.size - offset);
      this.span = { id: this.h.nextId(), offset, length, touched: this.h.inFlight(offset, offset + length) };
      if (!this.h.requestHoles(this.span.id, offset, length)) return this.fail(new Error('peer link lost during verify'));
    }
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
    if (this.queue.length === 0 && this.open.size === 0 && this.waitingForRate === 0 && !this.span && this.cursor >= this.h.size) {
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

/** The ranges inside both lists (each sorted and apart). */
export function intersectRanges(a: readonly ByteRange[], b: readonly ByteRange[]): ByteRange[] {
  const out: ByteRange[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i]!;
    const y = b[j]!;
    const from = Math.max(x.offset, y.offset);
    const to = Math.min(x.offset + x.length, y.offset + y.length);
    if (to > from) out.push({ offset: from, length: to - from });
    if (x.offset + x.length < y.offset + y.length) i++;
    else j++;
  }
  return out;
}

/**
 * `ranges` (sorted, apart) without anything in `cut`, shrunk to whole blocks of `block` (a range
 * may end at `size`, the volume's end, inside a block): a part of a block is never skipped.
 */
export function subtractRanges(ranges: readonly ByteRange[], cut: ReadonlyArray<[number, number]>, block: number, size: number): ByteRange[] {
  const out: ByteRange[] = [];
  for (const r of ranges) {
    let pieces: Array<[number, number]> = [[r.offset, r.offset + r.length]];
    for (const [x, y] of cut) pieces = pieces.flatMap(([a, b]): Array<[number, number]> => (y <= a || x >= b ? [[a, b]] : [[a, Math.min(b, x)], [Math.max(a, y), b]]));
    for (const [a, b] of pieces) {
      const from = Math.ceil(a / block) * block;
      const to = b >= size ? size : Math.floor(b / block) * block;
      if (to > from) out.push({ offset: from, length: to - from });
    }
  }
  return out;
}
