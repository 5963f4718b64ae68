// The source of a resync: answers the target's requests for ranges — its holes
// (RS_HOLES_REQUEST), the data (RS_REQUEST), the blocks that differ from the target's digests
// (RS_CSUM_REQUEST), a read for the target's client (PEER_READ) — and clears its bits as the
// target acknowledges durable copies (RS_ACK). The receiver's table (peer-frames.ts) admits
// these frames only while this node is a source that has the target's dirty runs.
import type { MirrorContext } from './mirror-context.js';
import { answerHoles, answerRange } from './range-answer.js';
import type { ResyncRun } from './resync.js';
import { decodeRange, encodeDigest, encodeRange, PeerMsg, RS_DATA_ZERO, sealDigest } from './peer-protocol.js';

export class ResyncSource {
  constructor(
    private readonly ctx: MirrorContext,
    readonly run: ResyncRun,
  ) {}

  /**
   * RS_REQUEST: the whole range, once every earlier change to it is on disk — or, when it is all
   * zeros (a hole of a thin volume or sparse file: not even read), an RS_DATA without data that
   * the target zeroes.
   */
  onRequest(id: bigint, body: Buffer): void {
    const { offset, length } = decodeRange(body);
    answerRange(this.ctx, 'RS_REQUEST', id, body, offset, length, false, (err, data) => {
      if (err) return this.cannotRead(err, offset, length);
      if (data.length === 0 || this.ctx.hot.allZero(data)) {
        const none = data.subarray(0, 0);
        return void this.ctx.peer.send(PeerMsg.RS_DATA, id, [encodeRange(this.ctx.index, offset, length), encodeDigest(sealDigest(this.ctx.hot.digestOf(none), offset, RS_DATA_ZERO))]);
      }
      this.ctx.counters.resyncWireBytes += data.length;
      this.ctx.peer.send(PeerMsg.RS_DATA, id, [encodeRange(this.ctx.index, offset, length), encodeDigest(sealDigest(this.ctx.hot.digestOf(data), offset)), data]);
    }, true);
  }

  /**
   * RS_HOLES_REQUEST: the holes of the range, from the allocation map (nothing is read), once
   * every earlier change to it is on disk — a change that started before is data in the answer.
   * A change that starts later reaches this disk after the answer; it reaches the target after
   * the request left, so the target applies it after the holes too (see resync-target.ts). An
   * allocation map that cannot be read answers "no holes": the target then pulls the whole range.
   */
  onHolesRequest(id: bigint, body: Buffer): void {
    answerHoles(this.ctx, 'RS_HOLES_REQUEST', PeerMsg.RS_HOLES, id, body);
  }

  /** RS_CSUM_REQUEST: compared with the target's digests; only the blocks that differ are sent. */
  onChecksumRequest(id: bigint, body: Buffer): void {
    const { compare } = this.ctx;
    const req = compare.decodeDigests(body);
    const theirs = req.digests; // a view of the body, kept until the answer is sent
    answerRange(this.ctx, 'RS_CSUM_REQUEST', id, body, req.offset, req.length, false, (err, data) => {
      if (err) return this.cannotRead(err, req.offset, req.length);
      const parts = compare.diffBody(this.ctx.index, req.offset, data, compare.differing(data, theirs));
      for (let i = 1; i < parts.length; i++) this.ctx.counters.resyncWireBytes += parts[i]!.length;
      this.ctx.peer.send(PeerMsg.RS_DIFF, id, parts);
    });
  }

  /** RS_ACK: the target has the range durably; its bits are cleared here too. */
  onAck(body: Buffer): void {
    const { offset, length } = decodeRange(body);
    const [first, count] = this.ctx.grains(offset, length);
    this.ctx.meta.clearDirty(first, count);
    this.run.doneBytes += length;
    this.ctx.counters.resyncedBytes += length;
  }

  /**
   * The range cannot be read here: this disk has failed (Failed), which resets the link (the
   * target keeps its bits; the next connection decides again) rather than leave the target
   * waiting for an answer that never comes.
   */
  private cannotRead(err: Error, offset: number, length: number): void {
    this.ctx.diskFailed(err, 'a resync read', offset, length);
  }
}
