// Reads this node cannot serve from its own copy (a resync target's ranges not copied yet) go
// to the peer: PEER_READ out, PEER_READ_DATA back, checked like any data frame. A damaged or
// mismatched answer is asked for again (same id); the link lost fails what is still open.
// Both sides are here: PeerReads asks, answerPeerRead answers.
import type { Done } from '../volume/volume.js';
import type { MirrorContext } from './mirror-context.js';
import { MirrorCode, MirrorError } from './mirror-errors.js';
import { answerRange } from './range-answer.js';
import { decodeRange, encodeDigest, encodeRange, encodeStatus, PEER_READ_DATA_HEADER_SIZE, PeerMsg, RANGE_SIZE, readDigest, sealDigest, statusErrno } from './peer-protocol.js';

export class PeerReads {
  private readonly open = new Map<bigint, { buf: Buffer; offset: number; done: Done }>();

  constructor(private readonly ctx: MirrorContext) {}

  read(buf: Buffer, offset: number, done: Done): void {
    const id = this.ctx.nextId();
    this.open.set(id, { buf, offset, done });
    if (!this.ctx.peer.send(PeerMsg.PEER_READ, id, encodeRange(this.ctx.index, offset, buf.length))) {
      this.open.delete(id);
      done(notResynced());
    }
  }

  /** PEER_READ_DATA: the peer's answer. */
  onData(id: bigint, body: Buffer): void {
    const p = this.open.get(id);
    if (!p) return;
    const status = body.readUInt32BE(RANGE_SIZE);
    if (status !== 0) {
      this.open.delete(id);
      return p.done(new MirrorError(MirrorCode.PEER_FAILED, `the peer failed to read the range (${statusErrno(status)})`, statusErrno(status)));
    }
    const data = body.subarray(PEER_READ_DATA_HEADER_SIZE);
    const range = decodeRange(body);
    // An answer for other bytes than were asked for is never served: damaged, like a bad digest.
    const matches = range.offset === p.offset && range.length === p.buf.length;
    if (!matches) this.ctx.countDamage(id, p.offset, p.buf.length);
    if (!matches || !this.ctx.intact(id, data, p.offset, 0, readDigest(body, RANGE_SIZE + 4))) {
      // Ask again (same id): the answer replaces this one.
      this.ctx.peer.send(PeerMsg.PEER_READ, id, encodeRange(this.ctx.index, p.offset, p.buf.length));
      return;
    }
    this.open.delete(id);
    data.copy(p.buf);
    p.done(null);
  }

  /** The link is gone: reads still waiting for the peer fail (this node lacks their data). */
  peerLost(): void {
    for (const [id, p] of this.open) {
      this.open.delete(id);
      p.done(notResynced());
    }
  }
}

export function notResynced(): MirrorError {
  return new MirrorError(MirrorCode.NOT_RESYNCED, 'this range is not resynced yet and the peer is gone');
}

/** PEER_READ: a read for the peer's client, answered once earlier changes to the range are on disk. */
export function answerPeerRead(ctx: MirrorContext, id: bigint, body: Buffer): void {
  const { offset, length } = decodeRange(body);
  // A copy asked by a peer whose disk failed may itself be incomplete: what it lacks is not served.
  if (ctx.lacks(offset, length)) {
    ctx.peer.release(body);
    const err = new MirrorError(MirrorCode.INCOMPLETE_COPY, 'this copy lacks the range (not resynced yet)', 'EIO');
    return void ctx.peer.send(PeerMsg.PEER_READ_DATA, id, [encodeRange(ctx.index, offset, length), encodeStatus(err), encodeDigest(0n)]);
  }
  answerRange(ctx, 'PEER_READ', id, body, offset, length, false, (err, data) => {
    const head = encodeRange(ctx.index, offset, length);
    const sealed = encodeDigest(err ? 0n : sealDigest(ctx.hot.digestOf(data), offset));
    ctx.peer.send(PeerMsg.PEER_READ_DATA, id, err ? [head, encodeStatus(err), sealed] : [head, encodeStatus(null), sealed, data]);
  });
}
