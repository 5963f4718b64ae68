// Online verify of one mirrored volume, both sides: this node verifying (a VerifyRun, verify.ts,
// over the peer link: VERIFY_HOLES_REQUEST out, VERIFY_HOLES back per span, then VERIFY_REQUEST
// out, VERIFY_DIGESTS back per chunk not a hole on both nodes; the differing ranges are marked
// out of sync on both nodes, not repaired) and this node answering the peer's verify (its holes
// of a span from the allocation map, digests of a range, each in its place among overlapping
// writes). A chunk that is a hole on one side only is not read there: it compares as zero blocks.
import type { MirrorContext } from './mirror-context.js';
import { MirrorCode, MirrorError } from './mirror-errors.js';
import { decodeHoles, decodeRange, encodeRange, holesIntact, PeerMsg } from './peer-protocol.js';
import { answerHoles, answerRange, EMPTY, isHole, lookupHoles } from './range-answer.js';
import { VerifyRun, type VerifyReport } from './verify.js';

export class VolumeVerify {
  private run: VerifyRun | undefined;

  constructor(private readonly ctx: MirrorContext) {}

  /** Progress of a running verify, if any. */
  get report(): VerifyReport | undefined {
    return this.run?.report;
  }

  get running(): boolean {
    return this.run !== undefined;
  }

  start(done: (err: Error | null, report: VerifyReport | undefined) => void): void {
    const { ctx } = this;
    if (this.run) return done(new MirrorError(MirrorCode.BUSY, 'a verify of this volume is already running'), undefined);
    const run = new VerifyRun(
      {
        size: ctx.size,
        blockSize: ctx.grain,
        comparer: ctx.compare,
        rate: ctx.rate,
        requestDigests: (id, offset, length) => ctx.peer.send(PeerMsg.VERIFY_REQUEST, id, encodeRange(ctx.index, offset, length)),
        requestHoles: (id, offset, length) => ctx.peer.send(PeerMsg.VERIFY_HOLES_REQUEST, id, encodeRange(ctx.index, offset, length)),
        localHoles: (offset, length, cb) => lookupHoles(ctx, 'VERIFY_HOLES', offset, length, cb),
        inFlight: (offset, end) => ctx.tracker.filter((e) => e.origin !== 'resync' && e.end > offset && e.offset < end).map((e): [number, number] => [e.offset, e.end]),
        // A hole here is not read: the comparer takes it as zero blocks (empty data).
        readLocal: (offset, length, cb) => {
          isHole(
            ctx.local,
            offset,
            length,
            ctx.guard('VERIFY_DIGESTS', (hole) => {
              if (hole) return cb(null, EMPTY);
              const data = ctx.hot.slots.acquire(length);
              ctx.local.read(data, offset, ctx.guard('VERIFY_DIGESTS', (err) => cb(err, data)));
            }),
          );
        },
        releaseLocal: (data) => data.length > 0 && ctx.hot.slots.release(data),
        nextId: () => ctx.nextId(),
      },
      (err, report) => {
        this.run = undefined;
        const grains = report.ranges.map((r) => {
          const [start, length] = ctx.grains(r.offset, r.length);
          return { start, length };
        });
        if (grains.length === 0) return done(err, report);
        // Out of sync on both nodes: marked durably here, and the peer marks them too.
        if (ctx.peer.connected) ctx.sendRuns(grains, false);
        let left = grains.length;
        for (const g of grains) ctx.meta.markDirty(g.start, g.length, () => --left === 0 && done(err, report));
      },
    );
    this.run = run;
    run.start();
  }

  /** A client change of [offset, end) while verifying: those blocks are compared again. */
  touch(offset: number, end: number): void {
    this.run?.touch(offset, end);
  }

  /** VERIFY_DIGESTS: the peer's digests for a request of ours. */
  onDigests(id: bigint, body: Buffer): void {
    this.run?.onDigests(id, this.ctx.compare.decodeDigests(body).digests);
  }

  /** VERIFY_HOLES: the peer's holes in a span we asked about (a damaged answer is asked again). */
  onHoles(id: bigint, body: Buffer): void {
    if (!holesIntact(body, (b) => this.ctx.hot.digestOf(b))) return this.run?.askHolesAgain(id);
    const { offset, length } = decodeRange(body);
    this.run?.onHoles(id, offset, length, decodeHoles(body));
  }

  /** VERIFY_HOLES_REQUEST: the peer verifying; our holes of the span, from the allocation map. */
  onHolesRequest(id: bigint, body: Buffer): void {
    answerHoles(this.ctx, 'VERIFY_HOLES_REQUEST', PeerMsg.VERIFY_HOLES, id, body);
  }

  /**
   * VERIFY_REQUEST: the peer verifying; our digests of the range, once earlier writes to it are
   * on disk. A hole here is not read (the digests of zero blocks).
   */
  onRequest(id: bigint, body: Buffer): void {
    const { ctx } = this;
    const { offset, length } = decodeRange(body);
    answerRange(
      ctx,
      'VERIFY_REQUEST',
      id,
      body,
      offset,
      length,
      true,
      (err, data) => {
        if (!err) ctx.peer.send(PeerMsg.VERIFY_DIGESTS, id, ctx.compare.digestRequest(ctx.index, offset, data, length));
      },
      true,
    );
  }

  abort(why: string): void {
    this.run?.abort(why);
  }
}
