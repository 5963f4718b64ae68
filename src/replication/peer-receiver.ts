// The peer receiver of one volume (DRBD's receiver thread): every frame routed to the volume is
// checked against the declared table (peer-frames.ts) before its handler runs, and handed to
// the handler the volume declares for its type. A frame the table refuses throws — the link
// drops — having changed no data and no bit.
//
// Body ownership (the link's receive budget counts a frame until its body is given back): a data
// frame's body (WRITE, RS_DATA, RS_DIFF) is written from in place, and a range request's (RS_REQUEST,
// RS_CSUM_REQUEST, RS_HOLES_REQUEST, PEER_READ, VERIFY_REQUEST, VERIFY_HOLES_REQUEST) is kept until its answer is sent, so their handlers
// give the body back (peer.release) themselves; such a handler does all that may throw before its
// I/O starts, and a throw before then gives the body back here. Every other frame is done with
// its body when its handler returns.
import type { MirrorContext } from './mirror-context.js';
import { checkVolumeFrame, type VolumePhase } from './peer-frames.js';
import { PeerMsg, type FrameHeader } from './peer-protocol.js';

export type FrameHandler = (h: FrameHeader, body: Buffer) => void;

/** The frames a volume takes from its peer (LEAVING, PING, PONG, HELLO, ERROR are the link's). */
export type VolumeFrameType =
  | PeerMsg.WRITE
  | PeerMsg.WRITE_ACK
  | PeerMsg.FLUSH
  | PeerMsg.FLUSH_ACK
  | PeerMsg.TRIM
  | PeerMsg.ZERO
  | PeerMsg.BITMAP_RUNS
  | PeerMsg.RS_REQUEST
  | PeerMsg.RS_DATA
  | PeerMsg.RS_ACK
  | PeerMsg.RS_HOLES_REQUEST
  | PeerMsg.RS_HOLES
  | PeerMsg.RS_DONE
  | PeerMsg.PEER_READ
  | PeerMsg.PEER_READ_DATA
  | PeerMsg.RS_CSUM_REQUEST
  | PeerMsg.RS_DIFF
  | PeerMsg.VERIFY_REQUEST
  | PeerMsg.VERIFY_DIGESTS
  | PeerMsg.VERIFY_HOLES_REQUEST
  | PeerMsg.VERIFY_HOLES
  | PeerMsg.RESYNC_NOW
  | PeerMsg.DISK_FAILED;

const KEEPS_BODY: ReadonlySet<number> = new Set([PeerMsg.WRITE, PeerMsg.RS_DATA, PeerMsg.RS_DIFF, PeerMsg.RS_REQUEST, PeerMsg.RS_CSUM_REQUEST, PeerMsg.RS_HOLES_REQUEST, PeerMsg.PEER_READ, PeerMsg.VERIFY_REQUEST, PeerMsg.VERIFY_HOLES_REQUEST]);

export class PeerReceiver {
  constructor(
    private readonly ctx: MirrorContext,
    private readonly phase: () => VolumePhase,
    private readonly handlers: Readonly<Record<VolumeFrameType, FrameHandler>>,
  ) {}

  /** A frame from the peer for this volume; the body is given back (peer.release) once used. */
  handle(h: FrameHeader, body: Buffer): void {
    const keeps = KEEPS_BODY.has(h.type);
    try {
      checkVolumeFrame(h, body, { index: this.ctx.index, size: this.ctx.size, blockSize: this.ctx.grain, phase: this.phase() });
      // checkVolumeFrame refused every type outside the table, so a handler exists.
      this.handlers[h.type as VolumeFrameType](h, body);
    } catch (err) {
      if (keeps) this.ctx.peer.release(body);
      throw err;
    } finally {
      if (!keeps) this.ctx.peer.release(body);
    }
  }
}
