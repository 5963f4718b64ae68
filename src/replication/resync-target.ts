// The target of a resync: walks the dirty bits (the union of both nodes' bits, once the
// source's runs are in) span by span. For each span (up to 1 GiB from the next dirty grain) it
// first asks the source for its holes (RS_HOLES_REQUEST → RS_HOLES, answered from the source's
// allocation map): the dirty grains in those holes are zeroed here (nothing to do over a hole
// here too) and count as copied; only the dirty grains with data are pulled — the data, or with
// checksum resync only the blocks whose digests differ. Each request is tracked like a write,
// so later changes to its range wait for its answer. Copied data is made durable at
// checkpoints before bits are cleared and acknowledged (RS_ACK), so a power loss cannot leave
// a range counted in sync that never reached this disk; a resync cut short resumes from the
// last checkpoint. A full sync of a mostly empty thin volume thus costs one round trip per GiB
// of holes instead of one per MiB.
import { ProtocolViolation } from '../protocol/errors.js';
import type { InFlight } from './in-flight.js';
import type { MirrorContext } from './mirror-context.js';
import { isPoolFull } from './mirror-errors.js';
import { MAX_HOLES_RANGE, MAX_RESYNC_RANGE, PeerMsg, RANGE_SIZE, RS_DATA_HEADER_SIZE, RS_DATA_ZERO, decodeHoles, decodeRange, encodeRange, holesIntact, readDigest } from './peer-protocol.js';
import { isHole } from './range-answer.js';
import type { ResyncRun } from './resync.js';
import { holeGrains, HoleSpan, type GrainRun } from './resync-holes.js';

/** Largest range one resync request asks for (the peer refuses larger ones). */
const RESYNC_CHUNK = MAX_RESYNC_RANGE;
/** While clients are busy: smaller requests, so a client's write never queues behind much resync data. */
const RESYNC_CHUNK_BUSY = 256 * 1024;
/** Resync requests in flight at once. */
const RESYNC_WINDOW = 8;
/** A resync target makes copied data durable and clears its bits every this many bytes. */
const RESYNC_CHECKPOINT = 64 * 1024 * 1024;
/** …or every this many ranges (zero ranges over holes here change nothing and count no bytes). */
const RESYNC_CHECKPOINT_RANGES = 4096;

/** Where the target is: waiting for the source's dirty runs, pulling ranges (and holes), or at its last checkpoint. */
export type TargetPhase = 'AwaitingRuns' | 'Pulling' | 'Finishing';

/** Resync data matched with the request it answers (see parse). */
export interface ResyncData {
  readonly entry: InFlight;
  readonly range: { offset: number; length: number };
  readonly pieces: Array<{ offset: number; data: Buffer }>;
  /** RS_DIFF: its digest checked while parsing. */
  readonly intact: boolean;
  /** It names the range its request asked for. */
  readonly matches: boolean;
  readonly diff: boolean;
  /** RS_DATA: the sealed digest to check the data against. */
  readonly digest?: bigint;
  /** RS_DATA without data: the range is zeros on the source (RS_DATA_ZERO). */
  readonly zero: boolean;
}

export class ResyncTarget {
  phase: TargetPhase = 'AwaitingRuns';
  /** False once the volume ended this run (finished, failed or cut short by the link). */
  active = true;
  private cursor = 0;
  /** Requests in flight: data ranges, and the open RS_HOLES_REQUEST until its holes are applied. */
  private requests = 0;
  /**
   * The source's holes in the spans answered that the walk has not passed: the one it is in,
   * and the next one, asked ahead so the walk does not wait for it at the span's end.
   */
  private spans: HoleSpan[] = [];
  /** The open RS_HOLES_REQUEST's tracked span: writes to it that arrive later wait for its holes. */
  private holesAsked: InFlight | undefined;
  /** Ranges written since the last checkpoint, not known durable yet (their RS_ACK waits). */
  private readonly unsynced: Array<{ id: bigint; offset: number; length: number }> = [];
  private unsyncedBytes = 0;
  /** A checkpoint's flush is running; later checkpoints wait for it. */
  private syncing = false;
  private readonly afterSync: Array<() => void> = [];

  /**
   * @param end called once: null when every range is copied and acknowledged, else the error
   *   that stopped the run (a local write or flush failed)
   */
  constructor(
    private readonly ctx: MirrorContext,
    readonly run: ResyncRun,
    private readonly end: (err: Error | null) => void,
  ) {}

  /** The source's dirty runs are in: the bitmap names every range to pull. */
  runsIn(): void {
    this.phase = 'Pulling';
    this.pullMore();
  }

  /**
   * Keeps up to RESYNC_WINDOW requests in flight, walking the dirty runs in order: outside the
   * spans whose holes are known, it asks for the holes there and waits for them; inside one,
   * dirty grains in holes were zeroed when the answer came, the rest is pulled. One holes
   * request at a time, one span ahead of the walk.
   */
  private pullMore(): void {
    const { ctx } = this;
    if (!this.active) return;
    const bits = ctx.meta.bitmap.bits;
    while (this.requests < RESYNC_WINDOW && this.cursor < bits) {
      const [run] = ctx.meta.bitmap.runs(this.cursor, 1);
      if (!run) {
        this.cursor = bits;
        break;
      }
      const span = this.spanOf(run.start);
      if (!span) {
        if (!this.holesAsked) this.askHoles(run.start);
        break;
      }
      this.askAhead();
      const here = span.at(run.start);
      if (here.hole) {
        this.cursor = here.end;
        continue;
      }
      const grains = Math.min(run.length, here.end - run.start, (ctx.rate.busy ? RESYNC_CHUNK_BUSY : RESYNC_CHUNK) / ctx.grain);
      this.cursor = run.start + grains;
      const offset = run.start * ctx.grain;
      const length = Math.min(grains * ctx.grain, ctx.size - offset);
      this.requests++;
      // Paced (resync.maxRate, and slower while clients are busy). The range is tracked only
      // when its request leaves, so client writes to it are not held while it waits its turn.
      ctx.rate.take(length, () => {
        if (!this.active) return;
        const entry = ctx.track(offset, length, 'resync', ctx.nextId());
        this.ask(entry);
      });
    }
    if (this.requests === 0 && this.cursor >= bits && this.phase !== 'Finishing') {
      this.phase = 'Finishing';
      this.checkpoint(() => this.end(null));
    }
  }

  /** The known span holding `grain`; the spans the walk has passed are dropped (it only goes forward). */
  private spanOf(grain: number): HoleSpan | undefined {
    while (this.spans.length > 0 && this.spans[0]!.end <= grain) this.spans.shift();
    const span = this.spans[0];
    return span?.contains(grain) ? span : undefined;
  }

  /** In the last known span, with no holes request open: asks for the next span's holes now. */
  private askAhead(): void {
    if (this.holesAsked || this.spans.length !== 1) return;
    const { end } = this.spans[0]!;
    const [next] = end < this.ctx.meta.bitmap.bits ? this.ctx.meta.bitmap.runs(end, 1) : [];
    if (next) this.askHoles(next.start);
  }

  /**
   * Asks the source for its holes in the span of up to MAX_HOLES_RANGE from grain `start`. Not
   * paced: no data moves. The span is tracked from now until its holes are applied here, so a
   * change that reaches this node later — a client's here, or the source's, which started there
   * after the request arrived and so is on the source's disk only after its answer — lands
   * after the zeroing, as on the source.
   */
  private askHoles(start: number): void {
    const { ctx } = this;
    const offset = start * ctx.grain;
    const entry = ctx.track(offset, Math.min(MAX_HOLES_RANGE, ctx.size - offset), 'resync', ctx.nextId());
    this.holesAsked = entry;
    this.requests++;
    ctx.peer.send(PeerMsg.RS_HOLES_REQUEST, entry.id, encodeRange(ctx.index, offset, entry.end - offset));
  }

  /**
   * RS_HOLES: the source's holes in the span asked (or its first part: the answer may cover
   * less). Refused — the link drops, nothing changed — unless it answers the open request, for
   * its offset, within its length; asked for again if its digest fails. The dirty grains of the holes are then zeroed here once the
   * changes that reached this node before the request are on disk: the source's answer saw
   * those too (they left before the request, or the source sent them before its answer).
   */
  onHoles(id: bigint, body: Buffer): void {
    const { ctx } = this;
    const asked = this.holesAsked;
    const refuse = (why: string): never => {
      throw new ProtocolViolation(`RS_HOLES for volume ${ctx.index}: ${why}`);
    };
    if (!this.active || !asked || asked.id !== id) return refuse('it answers no RS_HOLES_REQUEST of ours');
    const range = decodeRange(body);
    if (range.offset !== asked.offset || range.length > asked.end - asked.offset) return refuse(`it answers ${range.offset}+${range.length}, we asked ${asked.offset}+${asked.end - asked.offset}`);
    const end = range.offset + range.length >= ctx.size ? ctx.meta.bitmap.bits : Math.floor((range.offset + range.length) / ctx.grain);
    const start = asked.offset / ctx.grain;
    if (end <= start) return refuse(`it covers less than one grain (${range.length} bytes)`);
    if (!holesIntact(body, (b) => ctx.hot.digestOf(b))) {
      // Damaged on the way: asked for again (the span stays tracked), as damaged data is.
      ctx.countDamage(id, range.offset, range.length);
      if (ctx.peer.connected) ctx.peer.send(PeerMsg.RS_HOLES_REQUEST, id, encodeRange(ctx.index, asked.offset, asked.end - asked.offset));
      return;
    }
    ctx.intactAgain(id);
    const holes = holeGrains(decodeHoles(body), ctx.grain, ctx.size);
    this.holesAsked = undefined;
    const span = new HoleSpan(start, end, holes);
    // In order; one asked in a gap before the others (a bit set there since) replaces what it overlaps.
    this.spans = [...this.spans.filter((s) => s.end <= span.start || s.start >= span.end), span].sort((x, y) => x.start - y.start);
    const dirty = this.dirtyIn(holes);
    ctx.tracker.afterEarlier(asked, ctx.guard('RS_HOLES', () => this.zeroHoles(asked, dirty)));
  }

  /** The dirty grains inside `holes`. */
  private dirtyIn(holes: readonly GrainRun[]): GrainRun[] {
    const { bitmap } = this.ctx.meta;
    const out: GrainRun[] = [];
    for (const h of holes) {
      for (let at = h.start; at < h.end; ) {
        const [r] = bitmap.runs(at, 1);
        if (!r || r.start >= h.end) break;
        const end = Math.min(r.start + r.length, h.end);
        out.push({ start: r.start, end });
        at = end;
      }
    }
    return out;
  }

  /**
   * Zeroes the dirty grains of the source's holes here, then counts them copied: acknowledged
   * at the next checkpoint like pulled data, one RS_ACK per run (up to the span). Then the
   * span's tracking ends and the walk goes on.
   */
  private zeroHoles(span: InFlight, dirty: readonly GrainRun[]): void {
    const { ctx } = this;
    let left = dirty.length + 1; // + 1: settled once every zero has been started
    let error: Error | null = null;
    const settled = (): void => {
      if (--left > 0) return;
      ctx.tracker.release(span);
      this.requests--;
      if (error) return this.failed(error, span.offset, span.end - span.offset);
      if (this.unsyncedBytes >= RESYNC_CHECKPOINT || this.unsynced.length >= RESYNC_CHECKPOINT_RANGES) this.checkpoint();
      this.pullMore();
    };
    for (const g of dirty) {
      const offset = g.start * ctx.grain;
      const length = Math.min(g.end * ctx.grain, ctx.size) - offset;
      this.zeroUnlessHole(
        offset,
        length,
        ctx.guard('RS_HOLES', (err: Error | null, changed: boolean) => {
          if (err) error ??= err;
          else {
            this.run.doneBytes += length;
            ctx.counters.resyncedBytes += length;
            this.unsynced.push({ id: span.id, offset, length });
            if (changed) this.unsyncedBytes += length;
          }
          settled();
        }),
      );
    }
    settled();
  }

  /**
   * Zeroes [offset, offset + length) here — a thin volume frees the range's units, a raw file
   * punches a hole — unless it is one hole already (`changed` false: nothing to make durable).
   */
  private zeroUnlessHole(offset: number, length: number, done: (err: Error | null, changed: boolean) => void): void {
    const { ctx } = this;
    isHole(ctx.local, offset, length, (hole) => {
      if (hole) return done(null, false);
      ctx.local.zero(offset, length, { noHole: false, fastZero: false, fua: false }, (err) => done(err, true));
    });
  }

  /**
   * A local write or zero of the resync failed: the run stops. A full thin pool stops it (it
   * resumes on a later connection, once there is space); it is no disk failure.
   */
  private failed(error: Error, offset: number, length: number): void {
    if (!isPoolFull(error)) this.ctx.diskFailed(error, 'a resync write', offset, length);
    this.end(error);
  }

  /** Asks for a tracked range: its data, or with checksum resync the blocks that differ. */
  private ask(entry: InFlight): void {
    if (this.run.checksum) return this.askByChecksum(entry);
    this.ctx.peer.send(PeerMsg.RS_REQUEST, entry.id, encodeRange(this.ctx.index, entry.offset, entry.end - entry.offset));
  }

  /**
   * Checksum resync: digest what we hold of the range (once earlier writes to it are on disk;
   * later ones wait for the entry) and send the digests instead of asking for the data.
   */
  private askByChecksum(entry: InFlight): void {
    const { ctx } = this;
    const length = entry.end - entry.offset;
    ctx.tracker.afterEarlier(
      entry,
      ctx.guard('RS_CSUM_REQUEST', () => {
        const data = ctx.hot.slots.acquire(length);
        ctx.local.read(
          data,
          entry.offset,
          ctx.guard('RS_CSUM_REQUEST', (err) => {
            let body: Buffer[];
            try {
              // Unreadable here: ask for the whole range instead.
              if (err) return void ctx.peer.send(PeerMsg.RS_REQUEST, entry.id, encodeRange(ctx.index, entry.offset, length));
              body = ctx.compare.digestRequest(ctx.index, entry.offset, data);
            } finally {
              ctx.hot.slots.release(data);
            }
            ctx.peer.send(PeerMsg.RS_CSUM_REQUEST, entry.id, body);
          }),
        );
      }),
    );
  }

  /**
   * The resync data of a request — the whole range (RS_DATA) or the blocks that differed
   * (RS_DIFF) — parsed and matched with the request it answers; undefined for a request no
   * longer open. Throws on a malformed RS_DIFF (nothing written yet).
   */
  parse(type: PeerMsg, id: bigint, body: Buffer): ResyncData | undefined {
    const entry = this.ctx.tracker.findRange(id);
    if (!entry || !this.active) return undefined;
    const range = decodeRange(body);
    // Data for another range than was asked for is never written: treated as damaged (asked
    // for again, and the link reset if it keeps coming), as its sealed digest would be.
    const matches = range.offset === entry.offset && range.length === entry.end - entry.offset;
    if (type === PeerMsg.RS_DIFF) {
      const { pieces, intact } = this.ctx.compare.decodeDiff(body);
      return { entry, range, pieces, intact, matches, diff: true, zero: false };
    }
    const data = body.subarray(RS_DATA_HEADER_SIZE);
    const zero = data.length === 0 && range.length > 0;
    return { entry, range, pieces: [{ offset: range.offset, data }], intact: true, matches, diff: false, digest: readDigest(body, RANGE_SIZE), zero };
  }

  /** Writes the resync data (later writes to the range wait for it), then accounts for it (see checkpoint). */
  write(id: bigint, d: ResyncData, body: Buffer): void {
    const { ctx } = this;
    const { entry, range, pieces } = d;
    let intact: boolean;
    if (d.diff || !d.matches) {
      intact = d.intact && d.matches;
      if (!intact) ctx.countDamage(id, entry.offset, entry.end - entry.offset);
    } else {
      intact = ctx.intact(id, pieces[0]!.data, range.offset, d.zero ? RS_DATA_ZERO : 0, d.digest!);
    }
    if (!intact) {
      ctx.peer.release(body);
      // Asked for again the way it was asked for.
      if (ctx.peer.connected) this.ask(entry);
      return;
    }
    ctx.intactAgain(id);
    let left = pieces.length;
    let error: Error | null = null;
    /** The range changed nothing here (zeros over a hole): no data to make durable. */
    let unchanged = false;
    const written = (err: Error | null): void => {
      error ??= err;
      if (--left > 0) return;
      ctx.peer.release(body);
      if (!error) {
        this.run.doneBytes += range.length;
        ctx.counters.resyncedBytes += range.length;
        for (const p of pieces) ctx.counters.resyncWireBytes += p.data.length;
        this.unsynced.push({ id, offset: range.offset, length: range.length });
        if (!unchanged) this.unsyncedBytes += range.length;
      }
      ctx.tracker.release(entry);
      this.requests--;
      if (error) return this.failed(error, range.offset, range.length);
      // Every 64 MiB the copied data is made durable and its bits cleared (see checkpoint).
      if (this.unsyncedBytes >= RESYNC_CHECKPOINT || this.unsynced.length >= RESYNC_CHECKPOINT_RANGES) this.checkpoint();
      this.pullMore();
    };
    if (left === 0) return void ((left = 1), written(null));
    const writtenSafely = ctx.guard('RS_DATA', written);
    // Zeros on the source: allocated zeros, or a hole the walk did not know of (made after its
    // RS_HOLES answer, or part of a grain).
    if (d.zero) {
      return this.zeroUnlessHole(range.offset, range.length, ctx.guard('RS_DATA', (err: Error | null, changed: boolean) => {
        unchanged = !changed;
        writtenSafely(err);
      }));
    }
    for (const p of pieces) ctx.local.write(p.data, p.offset, false, writtenSafely);
  }

  /**
   * Makes the resync data written so far durable (the volume's flush), and only then clears its
   * bits and acknowledges the ranges to the source, which clears its own. Until then both nodes
   * keep the bits.
   */
  private checkpoint(then?: () => void): void {
    const { ctx } = this;
    if (this.syncing) return void this.afterSync.push(() => this.checkpoint(then));
    const batch = this.unsynced.splice(0);
    this.unsyncedBytes = 0;
    this.syncing = true;
    ctx.local.flush((err) => {
      this.syncing = false;
      if (!this.active) return; // cut short: the bits stay set on both nodes
      if (err) return this.end(err);
      for (const b of batch) {
        const [first, count] = ctx.grains(b.offset, b.length);
        ctx.meta.clearDirty(first, count);
        ctx.peer.send(PeerMsg.RS_ACK, b.id, encodeRange(ctx.index, b.offset, b.length));
      }
      ctx.meta.flushBitmap(() => undefined);
      for (const next of this.afterSync.splice(0)) next();
      then?.();
    });
  }
}
