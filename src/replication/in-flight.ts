// In-flight request tracking and the overlap-ordering rule of a mirrored volume (DRBD's
// "conflict detection"). Pure: it decides when each change may touch the disk and which bytes
// it must leave alone; the caller does the I/O.
//
// A change is "in flight" on a node from when it starts (local) or arrives (from the peer)
// until its WRITE_ACK is received (local) or sent (peer); a resync or verify request for a range
// is in flight from when it is asked for (target) or arrives (source) until its data is written
// (target) or read (source). Two overlapping changes from different nodes that are in flight
// together are concurrent, and over the link's FIFO order both nodes see the same pairs as
// concurrent. For such a pair the change of the node whose name sorts LATER lands last on both:
//   - the winner's change waits until the loser's change is on disk, then is applied in full;
//   - the loser's change skips the bytes it shares with the winner's.
// Changes of the same origin that overlap are applied in the order they started, and a resync
// or verify range is ordered with everything (it must see, or be seen by, each change in full).
//
// A local change stops being concurrent when its WRITE_ACK arrives, even if its own disk write
// is still running: the peer sent that ACK before anything it started later, so the peer saw
// the two as ordered. A later peer change overlapping it then waits for it and is applied in
// full, as on the peer. (Found by the property test: untracking only once both halves were
// done let such a later peer change skip the bytes here while it overwrote them there.)
import type { Done } from '../volume/volume.js';

export type Origin = 'local' | 'peer' | 'resync';

export interface InFlight {
  readonly id: bigint;
  readonly offset: number;
  readonly end: number;
  readonly origin: Origin;
  /** Set once this change's bytes are in the local volume (or it was given up). */
  onDisk: boolean;
  /** A local change the peer has answered: later peer changes follow it (see the file comment). */
  answered: boolean;
  readonly whenOnDisk: Array<() => void>;
}

/** Applies [from, to) of a change to the local volume. */
export type Piece = (from: number, to: number, done: Done) => void;

export class InFlightTracker {
  private readonly entries: InFlight[] = [];

  /** @param localWinsOverlaps this node's name sorts after the peer's */
  constructor(private readonly localWinsOverlaps: boolean) {}

  /** Starts tracking a change or range request; order of calls = order of start. */
  track(offset: number, length: number, origin: Origin, id: bigint): InFlight {
    const entry: InFlight = { id, offset, end: offset + length, origin, onDisk: false, answered: false, whenOnDisk: [] };
    this.entries.push(entry);
    return entry;
  }

  /** Stops tracking `entry` (later changes no longer see it); what waits on it keeps waiting. */
  untrack(entry: InFlight): void {
    const i = this.entries.indexOf(entry);
    if (i >= 0) this.entries.splice(i, 1);
  }

  /** `entry`'s bytes are on disk (or it was given up): what waits on it goes on. */
  landed(entry: InFlight): void {
    entry.onDisk = true;
    for (const w of entry.whenOnDisk.splice(0)) w();
  }

  /** The peer answered local change `entry`: no longer concurrent with what arrives next. */
  answered(entry: InFlight): void {
    entry.answered = true;
  }

  /** Untracks `entry` and lets what waits on it go. */
  release(entry: InFlight): void {
    this.untrack(entry);
    this.landed(entry);
  }

  /** The open resync/verify request with this id, if any. */
  findRange(id: bigint): InFlight | undefined {
    return this.entries.find((e) => e.id === id && e.origin === 'resync');
  }

  /** Entries matching `pred`, oldest first (a copy: the caller may release them). */
  filter(pred: (e: InFlight) => boolean): InFlight[] {
    return this.entries.filter(pred);
  }

  get size(): number {
    return this.entries.length;
  }

  /**
   * Runs `fn` once every earlier overlapping entry `entry` must follow is on disk; `fn` gets the
   * concurrent changes whose bytes `entry` must leave alone (see the file comment).
   */
  afterEarlier(entry: InFlight, fn: (skip: InFlight[]) => void): void {
    const mustFollow: InFlight[] = [];
    const skip: InFlight[] = [];
    for (const other of this.entries) {
      if (other === entry) break; // only entries that started before this one
      if (other.end <= entry.offset || other.offset >= entry.end) continue;
      const concurrent = other.origin !== entry.origin && other.origin !== 'resync' && entry.origin !== 'resync' && !other.answered;
      if (!concurrent || this.landsLast(entry)) mustFollow.push(other);
      else skip.push(other);
    }
    const waiting = mustFollow.filter((o) => !o.onDisk);
    let left = waiting.length;
    if (left === 0) return fn(skip);
    for (const o of waiting) o.whenOnDisk.push(() => --left === 0 && fn(skip));
  }

  /**
   * Applies `entry`'s change in its place in the order of overlapping changes: the pieces of it
   * no concurrent winner covers, each through `piece`; `done` gets the first error. The entry
   * counts as on disk then (it stays tracked: the caller untracks it when it is acknowledged).
   */
  apply(entry: InFlight, piece: Piece, done: Done): void {
    this.afterEarlier(entry, (skip) => {
      const pieces = subtract(entry.offset, entry.end, skip);
      let left = pieces.length;
      let error: Error | null = null;
      const finished = (): void => {
        this.landed(entry);
        done(error);
      };
      if (left === 0) return finished();
      for (const [from, to] of pieces) {
        piece(from, to, (err) => {
          error ??= err;
          if (--left === 0) finished();
        });
      }
    });
  }

  /** Does `entry` win overlaps with concurrent changes of the other origin? */
  private landsLast(entry: InFlight): boolean {
    return entry.origin === 'local' ? this.localWinsOverlaps : !this.localWinsOverlaps;
  }
}

/** [from, to) minus the ranges of `cut`, as sorted pieces. */
export function subtract(from: number, to: number, cut: ReadonlyArray<{ readonly offset: number; readonly end: number }>): Array<[number, number]> {
  let pieces: Array<[number, number]> = [[from, to]];
  for (const c of cut) {
    pieces = pieces.flatMap(([a, b]): Array<[number, number]> => {
      if (c.end <= a || c.offset >= b) return [[a, b]];
      const out: Array<[number, number]> = [];
      if (c.offset > a) out.push([a, c.offset]);
      if (c.end < b) out.push([c.end, b]);
      return out;
    });
  }
  return pieces;
}
