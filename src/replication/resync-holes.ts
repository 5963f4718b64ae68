// The hole walk of a resync, both sides, pure: what a source answers to RS_HOLES_REQUEST from
// its allocation map (`Volume.extents`: a thin volume's unallocated units, a raw file's
// SEEK_HOLE ranges), and how the target turns an answer into whole grains it need not pull.
// A range counts as a hole only when it is unallocated (reads as zeros without being read);
// allocated zeros are data here (the RS_DATA_ZERO answer covers those).
import { AllocState } from '../protocol/constants.js';
import type { Extent } from '../volume/volume.js';
import type { ByteRun } from './peer-protocol.js';

/** What a source answers: the part of the asked range it covers, and the holes in that part. */
export interface HolesAnswer {
  /** Bytes from the asked offset the answer covers (the whole range unless it had too many holes). */
  readonly length: number;
  /** Hole runs, whole grains (the last may end at the volume's end), ordered and apart. */
  readonly holes: ByteRun[];
}

/**
 * The holes of [offset, offset + length) from the extents the volume reported from `offset`
 * (complete extents, possibly fewer than the range: then the answer covers what they cover).
 * Holes are cut to whole grains, so the target never skips part of a grain that holds data;
 * at most `maxRuns` of them (the answer then stops where the next one starts). `offset` is a
 * grain boundary. "No holes" is always a correct answer: anything unsure is data.
 */
export function holesAnswer(offset: number, length: number, extents: readonly Extent[], grain: number, size: number, maxRuns: number): HolesAnswer {
  let covered = 0;
  const holes: ByteRun[] = [];
  for (const x of extents) {
    const start = offset + covered;
    covered = Math.min(covered + x.length, length);
    const end = offset + covered;
    if (x.flags & AllocState.HOLE) {
      const from = Math.ceil(start / grain) * grain;
      const to = end === size ? end : Math.floor(end / grain) * grain;
      if (to > from) holes.push({ offset: from, length: to - from });
    }
    if (covered === length) break;
  }
  // Extents that stop short (a list cut at its maximum): the answer covers whole grains of them.
  if (covered < length) covered = Math.floor((offset + covered) / grain) * grain - offset;
  if (covered <= 0) return { length, holes: [] };
  if (holes.length > maxRuns) {
    covered = holes[maxRuns]!.offset - offset;
    holes.length = maxRuns;
  }
  const end = offset + covered;
  return { length: covered, holes: holes.filter((h) => h.offset < end).map((h) => ({ offset: h.offset, length: Math.min(h.offset + h.length, end) - h.offset })) };
}

/** A run of grains [start, end). */
export interface GrainRun {
  readonly start: number;
  readonly end: number;
}

/**
 * The whole grains the source's hole runs cover, as the target sees them: it trusts a hole only
 * for grains entirely inside it (a grain that ends past the volume's end counts when the hole
 * reaches that end), so a grain partly of data is always pulled.
 */
export function holeGrains(holes: readonly ByteRun[], grain: number, size: number): GrainRun[] {
  const out: GrainRun[] = [];
  for (const h of holes) {
    const end = h.offset + h.length;
    const run = { start: Math.ceil(h.offset / grain), end: end >= size ? Math.ceil(size / grain) : Math.floor(end / grain) };
    if (run.end > run.start) out.push(run);
  }
  return out;
}

/**
 * The source's map of one span of grains [start, end): its holes (ordered), looked up by a
 * cursor that only moves forward.
 */
export class HoleSpan {
  private next = 0;

  constructor(
    readonly start: number,
    readonly end: number,
    readonly holes: readonly GrainRun[],
  ) {}

  contains(grain: number): boolean {
    return grain >= this.start && grain < this.end;
  }

  /**
   * From grain `at` (inside the span, at or after the last one asked): the hole it is in, or
   * else how far data runs from it (to the next hole or the span's end).
   */
  at(at: number): { hole: boolean; end: number } {
    while (this.next < this.holes.length && this.holes[this.next]!.end <= at) this.next++;
    const h = this.holes[this.next];
    if (h && h.start <= at) return { hole: true, end: h.end };
    return { hole: false, end: h ? h.start : this.end };
  }
}
