// The peer's writes, trims and zeroes arriving here: each is tracked in its place among
// overlapping changes (in-flight.ts), applied, and answered with WRITE_ACK carrying the real
// status. A WRITE whose digest fails is never applied: it keeps its place (a placeholder in the
// tracker) and is answered STATUS_RESEND, so the sender sends it again.
import type { InFlight, Piece } from './in-flight.js';
import type { MirrorContext } from './mirror-context.js';
import { decodeRange, decodeWriteHeader, encodeStatus, encodeStatusCode, PeerMsg, RANGE_SIZE, STATUS_RESEND, WRITE_HEADER_SIZE } from './peer-protocol.js';
import { isPoolFull, MirrorCode, MirrorError } from './mirror-errors.js';

/** How a change is applied to the local volume (shared with the local write path). */
export interface Appliers {
  writer(buf: Buffer, offset: number, fua: boolean): Piece;
  trimmer(fua: boolean): Piece;
  zeroer(flags: number): Piece;
}

export function localAppliers(ctx: MirrorContext): Appliers {
  return {
    writer: (buf, offset, fua) => (from, to, cb) => ctx.local.write(buf.subarray(from - offset, to - offset), from, fua, cb),
    trimmer: (fua) => (from, to, cb) => ctx.local.trim(from, to - from, fua, cb),
    zeroer: (flags) => (from, to, cb) => ctx.local.zero(from, to - from, { fua: (flags & 1) !== 0, noHole: (flags & 2) !== 0, fastZero: false }, cb),
  };
}

export class PeerChanges {
  /** Peer WRITEs that failed their check: tracked in place, waiting for the resend. */
  private readonly damaged = new Map<bigint, InFlight>();

  constructor(
    private readonly ctx: MirrorContext,
    private readonly apply: Appliers,
  ) {}

  /** WRITE; its body is given back once the data is on disk (or found damaged). */
  onWrite(id: bigint, body: Buffer): void {
    const { ctx } = this;
    const w = decodeWriteHeader(body);
    const data = body.subarray(WRITE_HEADER_SIZE);
    let placeholder = this.damaged.get(id);
    if (!ctx.intact(id, data, w.offset, w.flags, w.digest)) {
      ctx.peer.release(body);
      if (!ctx.peer.connected) return; // the link was reset: the peer marks this write dirty
      // Hold its place among overlapping writes until the good copy comes.
      if (!placeholder) this.damaged.set(id, ctx.track(w.offset, data.length, 'peer', id));
      ctx.peer.send(PeerMsg.WRITE_ACK, id, encodeStatusCode(STATUS_RESEND));
      return;
    }
    this.damaged.delete(id);
    if (placeholder && (placeholder.offset !== w.offset || placeholder.end !== w.offset + data.length)) {
      // The damage was in the range itself: the placeholder guarded the wrong bytes.
      ctx.tracker.release(placeholder);
      placeholder = undefined;
    }
    const entry = placeholder ?? ctx.track(w.offset, data.length, 'peer', id);
    this.applyChange(entry, this.apply.writer(data, w.offset, (w.flags & 1) !== 0), () => ctx.peer.release(body));
  }

  /** TRIM or ZERO: range, then flags (1 = FUA, 2 = NO_HOLE). */
  onChange(type: PeerMsg.TRIM | PeerMsg.ZERO, id: bigint, body: Buffer): void {
    const { offset, length } = decodeRange(body);
    const flags = body.readUInt32BE(RANGE_SIZE);
    const piece = type === PeerMsg.TRIM ? this.apply.trimmer((flags & 1) !== 0) : this.apply.zeroer(flags);
    this.applyChange(this.ctx.track(offset, length, 'peer', id), piece);
  }

  /** FLUSH: answered once the local volume has flushed (a failure gives the disk up first). */
  onFlush(id: bigint): void {
    const { ctx } = this;
    // The peer's disk failed and this copy is incomplete: what the peer acknowledged alone is on
    // neither disk for sure, so no flush here can make it durable (found by the power-cut chaos
    // with disk errors: a node alone lost its disk with writes not yet flushed, its peer came
    // back behind, and this answer made the client's FLUSH succeed; the cut then lost them).
    const noCopy = this.noCompleteCopy('a flush here makes nothing durable');
    if (noCopy) return void ctx.peer.send(PeerMsg.FLUSH_ACK, id, encodeStatus(noCopy));
    ctx.local.flush(
      ctx.guard('FLUSH', (err) => {
        if (err) ctx.diskFailed(err, 'a peer flush', 0, 0);
        ctx.peer.send(PeerMsg.FLUSH_ACK, id, encodeStatus(err));
      }),
    );
  }

  /** The link is gone: damaged writes will not be sent again (the peer marks them dirty on its side). */
  peerLost(): void {
    for (const e of this.damaged.values()) this.ctx.tracker.release(e);
    this.damaged.clear();
  }

  /** The peer's disk failed and this copy is incomplete: no complete copy is left, so a change or flush from the peer fails (EIO). */
  private noCompleteCopy(what: string): MirrorError | null {
    const { ctx } = this;
    return ctx.peerDiskFailed && ctx.incomplete() ? new MirrorError(MirrorCode.INCOMPLETE_COPY, `the peer holds no copy and this one is incomplete: ${what}`, 'EIO') : null;
  }

  private applyChange(entry: InFlight, piece: Piece, applied?: () => void): void {
    const { ctx } = this;
    // A client's write on the peer is client I/O here too: a resync this node pulls yields to it.
    ctx.rate.clientIo();
    const answer = (err: Error | null): void => {
      ctx.tracker.untrack(entry);
      ctx.peer.send(PeerMsg.WRITE_ACK, entry.id, encodeStatus(err));
    };
    // The peer's disk failed and this copy is incomplete: applied here only, the change would be
    // overwritten by the resync from the peer once its disk is back. It fails, changed nowhere.
    const noCopy = this.noCompleteCopy('not applied');
    if (noCopy) {
      applied?.();
      ctx.tracker.landed(entry); // given up: nothing waits on it
      return answer(noCopy);
    }
    const length = entry.end - entry.offset;
    const [first, count] = ctx.grains(entry.offset, length);
    // The peer's disk failed: this copy is the only one, and its bits must name every change it
    // may hold *before* the change reaches its disk — the sender has no disk, so no activity log
    // of its own survives a power cut for it (found by the soak, disk-error phase: both nodes cut
    // while a forwarded write was landing here; the torn change was named by no bit and no log,
    // and the copies stayed different after the resync). Marked after it, as before, when the
    // peer's failure is learnt while the change lands.
    const markedFirst = ctx.peerDiskFailed;
    const land = (): void =>
      ctx.tracker.apply(
        entry,
        piece,
        ctx.guard('WRITE', (err) => {
          applied?.();
          // The local disk failed it: Failed (its DISK_FAILED goes out before this answer, so the
          // peer keeps the change as its own, marked out of sync).
          // A full thin pool is no disk failure: ENOSPC goes back to the sender, which fails the
          // write on both nodes (it applies it only after this answer when it allocates too).
          if (err && !isPoolFull(err)) ctx.diskFailed(err, 'a peer write', entry.offset, length);
          if (!ctx.peerDiskFailed || markedFirst) return answer(err);
          ctx.meta.markDirty(first, count, ctx.guard('WRITE', (e) => answer(err ?? e)));
        }),
      );
    if (!markedFirst) return land();
    ctx.meta.markDirty(
      first,
      count,
      ctx.guard('WRITE', (err) => {
        if (!err) return land();
        applied?.();
        ctx.tracker.landed(entry); // not applied: nothing waits on it
        answer(err);
      }),
    );
  }
}
