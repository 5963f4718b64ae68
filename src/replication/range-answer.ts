// The source side of every request about a range (resync, checksum resync, a resync's or a
// verify's holes, a stale read, verify): the range is tracked like a write — it is read (or its allocation looked
// up) once every earlier change to it is on disk, and changes that start later wait until it is
// — then answered.
import { AllocState } from '../protocol/constants.js';
import type { Volume } from '../volume/volume.js';
import type { MirrorContext } from './mirror-context.js';
import { decodeRange, encodeHoles, MAX_HOLE_RUNS, type PeerMsg } from './peer-protocol.js';
import { holesAnswer, type HolesAnswer } from './resync-holes.js';

/**
 * Runs `work` for the peer's request `id` about [offset, offset + length) in its place among
 * overlapping changes: once every earlier change to the range is on disk; changes that start
 * later wait until `work` calls `finish`. The request's frame `body` is kept until then, so the
 * link's receive budget counts the request's work; it is given back however the request ends
 * (`finish` may be called more than once; a throw from `work` finishes too).
 */
export function inPlace(ctx: MirrorContext, frame: string, id: bigint, body: Buffer, offset: number, length: number, work: (finish: () => void) => void): void {
  const entry = ctx.track(offset, length, 'resync', id);
  let ended = false;
  const finish = (): void => {
    if (ended) return;
    ended = true;
    ctx.tracker.release(entry);
    ctx.peer.release(body);
  };
  ctx.tracker.afterEarlier(
    entry,
    ctx.guard(frame, () => {
      try {
        work(finish);
      } catch (err) {
        finish();
        throw err;
      }
    }),
  );
}

/**
 * Reads [offset, offset + length) for the peer's request `id` in its place among overlapping
 * changes (see inPlace) and calls `answer` with the data (or the read's error). `inSlot`: the
 * data goes into a hot-path slot, given back when `answer` returns — only for answers that send
 * digests, never the data itself (the link may still hold a sent buffer).
 */
export function answerRange(
  ctx: MirrorContext,
  frame: string,
  id: bigint,
  body: Buffer,
  offset: number,
  length: number,
  inSlot: boolean,
  answer: (err: Error | null, data: Buffer) => void,
  /** A range the local volume reports as one hole is answered with no data at all (not read). */
  holesEmpty = false,
): void {
  inPlace(ctx, frame, id, body, offset, length, (finish) => {
    const read = (): void => {
      let data: Buffer;
      try {
        data = inSlot ? ctx.hot.slots.acquire(length) : Buffer.allocUnsafe(length);
      } catch (err) {
        finish(); // also when called after the wait for isHole, outside inPlace's own catch
        throw err;
      }
      ctx.local.read(
        data,
        offset,
        ctx.guard(frame, (err) => {
          try {
            answer(err, data);
          } finally {
            if (inSlot) ctx.hot.slots.release(data);
            finish();
          }
        }),
      );
    };
    if (!holesEmpty) return read();
    isHole(
      ctx.local,
      offset,
      length,
      ctx.guard(frame, (hole) => {
        if (!hole) return read();
        try {
          answer(null, EMPTY);
        } finally {
          finish();
        }
      }),
    );
  });
}

/** An answer for a hole: no data (the range reads as zeros). */
export const EMPTY = Buffer.alloc(0);

/**
 * Whether `volume` reports [offset, offset + length) as one unallocated range (a thin volume's
 * hole), which reads as zeros without being read; an error answers false (the range is read).
 */
export function isHole(volume: Volume, offset: number, length: number, done: (hole: boolean) => void): void {
  volume.extents(offset, length, 2, (err, extents) => {
    done(!err && extents.length === 1 && extents[0]!.length === length && (extents[0]!.flags & AllocState.HOLE) !== 0);
  });
}

/**
 * This node's holes in [offset, offset + length) (a grain boundary), from the allocation map
 * (`Volume.extents`: a thin volume's unallocated units, a raw file's SEEK_HOLE ranges; nothing
 * is read): at most MAX_HOLE_RUNS runs of whole grains; the answer may cover less than asked.
 * An allocation map that cannot be read answers "no holes" (everything counts as data).
 */
export function lookupHoles(ctx: MirrorContext, frame: string, offset: number, length: number, done: (answer: HolesAnswer) => void): void {
  // Alternating holes and data: twice as many extents as hole runs, and one to see past the last.
  ctx.local.extents(offset, length, 2 * MAX_HOLE_RUNS + 1, ctx.guard(frame, (err, extents) => {
    done(err ? { length, holes: [] } : holesAnswer(offset, length, extents, ctx.grain, ctx.size, MAX_HOLE_RUNS));
  }));
}

/**
 * RS_HOLES_REQUEST, VERIFY_HOLES_REQUEST: the holes of the range (lookupHoles) sent as `reply`
 * in an RS_HOLES body, once every earlier change to the range is on disk — a change that started
 * before is data in the answer; one that starts later waits for it (inPlace).
 */
export function answerHoles(ctx: MirrorContext, frame: string, reply: PeerMsg, id: bigint, body: Buffer): void {
  const { offset, length } = decodeRange(body);
  inPlace(ctx, frame, id, body, offset, length, (finish) => {
    lookupHoles(ctx, frame, offset, length, (answer) => {
      try {
        ctx.peer.send(reply, id, encodeHoles(ctx.index, offset, answer.length, answer.holes, (b) => ctx.hot.digestOf(b)));
      } finally {
        finish();
      }
    });
  });
}
