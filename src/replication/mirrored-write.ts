// The life of a client's write, trim or zero on a mirrored volume (protocol C), as one request
// object with a declared step and one event function, `on` (DRBD's __req_mod). Link loss is
// just an event. A change completes only when it is on both nodes, or — with the peer gone —
// once the dirty bits covering it are durable here and this node may write alone.
//
//   Queued ──turn──▶ Mirroring ──peer-ack ok──▶ PeerSettled ──(disk done)──▶ Completed
//     │                 │ peer-ack error / link-lost
//     │                 ▼
//     │          MarkingOutOfSync ──bits-durable──▶ PeerSettled (peer failed)
//     │                 │ (link lost)             ▶ AwaitingQuorum ──quorum──▶ PeerSettled
//     └─(no peer, quorum)─▶ Degraded ──bits-durable, disk-done──▶ Completed
//
// The disk half runs beside the peer half from Mirroring on (`disk-done` is legal in every step
// from there); the request completes when both halves are done. It succeeds if at least one
// node holds the change and the other's bits name it: a local disk failure with the peer's copy
// made moves this node's disk to Failed and the write succeeds; a failure on the peer fails it
// (the copies may differ there), unless the peer had said its disk failed (then it is marked
// out of sync here, as for a peer that is gone).
//
// Thin pools (invariant 10: a mirrored write allocates on both nodes or fails on both): a write
// that needs new units here reserves them before it is sent (none free: it fails at once, sent
// nowhere), and is applied here only once the peer has stored it. The peer answering ENOSPC
// then fails it on both sides with neither copy changed, and the reservation is given back.
// Neither disk is given up and the link stays up: a full pool is no failure of either.
import type { Done, Reservation } from '../volume/volume.js';
import type { InFlight, Piece } from './in-flight.js';
import type { MirrorContext } from './mirror-context.js';
import { errnoName, isPoolFull, MirrorCode, MirrorError } from './mirror-errors.js';
import { ProtocolViolation } from '../protocol/errors.js';
import { PeerMsg, STATUS_RESEND, statusErrno } from './peer-protocol.js';

export type WriteStep = 'Queued' | 'Mirroring' | 'MarkingOutOfSync' | 'AwaitingQuorum' | 'PeerSettled' | 'Degraded' | 'Completed';

export type WriteEvent =
  /** Its activity-log extents are durable (or, asked without the peer, the quorum answered). */
  | { readonly type: 'turn'; readonly err: Error | null }
  | { readonly type: 'disk-done'; readonly err: Error | null }
  | { readonly type: 'peer-ack'; readonly status: number }
  | { readonly type: 'link-lost' }
  | { readonly type: 'bits-durable'; readonly err: Error | null }
  | { readonly type: 'quorum'; readonly err: Error | null };

/** Which events each step takes; anything else is a bug, or (peer-ack) a peer breaking the protocol. */
const LEGAL: Readonly<Record<WriteStep, ReadonlyArray<WriteEvent['type']>>> = {
  Queued: ['turn'],
  Mirroring: ['disk-done', 'peer-ack', 'link-lost'],
  MarkingOutOfSync: ['disk-done', 'bits-durable', 'link-lost'],
  AwaitingQuorum: ['disk-done', 'quorum', 'link-lost'],
  PeerSettled: ['disk-done', 'link-lost'],
  Degraded: ['bits-durable', 'disk-done'],
  Completed: ['link-lost'],
};

/** What a write asks of the volume about writing without the peer (generation and disk state). */
export interface AlonePolicy {
  /** Why this copy may not take writes without its peer (or with a peer whose disk failed) now, or null. */
  refusal(): Error | null;
  /** About to write without the peer: start tracking changes (a new generation). */
  wroteAlone(): void;
  /**
   * The peer is back and this copy leads: the pair's resync copies from here (SyncSource), or
   * there is nothing to copy (Connected). What this copy made durable alone then reaches the peer.
   */
  leads(): boolean;
}

export class MirroredWrite {
  step: WriteStep = 'Queued';
  entry: InFlight | undefined;
  private diskDone = false;
  private error: Error | null = null;
  /** With the peer connected when asked for: its extents went into the activity log. */
  private logged: boolean;
  /** Asked for without the peer, and held by the quorum gate before its turn. */
  private heldForQuorum = false;
  /** Why its bits are being marked out of sync (MarkingOutOfSync). */
  private outOfSync: 'peer-failed' | 'peer-diskless' | 'link-lost' | undefined;
  /** The local disk failed it. */
  private localError: Error | null = null;
  /** The peer acknowledged it stored: its copy of the change exists. */
  private peerHasIt = false;
  /** Units this write will allocate here (thin pool): it is applied here after the peer's answer. */
  private reservation: Reservation | null = null;
  private localStarted = false;

  constructor(
    private readonly path: WritePath,
    readonly type: PeerMsg,
    /** The frame, kept to send again if the peer finds it damaged. */
    readonly frame: Buffer | readonly Buffer[],
    readonly offset: number,
    readonly length: number,
    private readonly piece: Piece,
    private readonly done: Done,
    /** A WRITE's payload (thin pools reserve the units it needs). */
    private readonly data?: Buffer,
  ) {
    this.logged = path.ctx.peer.connected;
  }

  /** The one way a write moves on. */
  on(e: WriteEvent): void {
    if (!LEGAL[this.step].includes(e.type)) {
      if (e.type === 'peer-ack') throw new ProtocolViolation(`WRITE_ACK for a write in step ${this.step}`);
      throw new Error(`write ${this.entry?.id ?? '(queued)'}: event ${e.type} in step ${this.step}`);
    }
    const ctx = this.path.ctx;
    switch (e.type) {
      case 'turn':
        return this.started(e.err);
      case 'disk-done':
        this.diskDone = true;
        if (this.step === 'Degraded') return this.complete(e.err);
        this.localError = e.err;
        return this.maybeComplete();
      case 'peer-ack':
        if (e.status === STATUS_RESEND) return void ctx.peer.send(this.type, this.entry!.id, this.frame);
        this.path.answered(this.entry!.id);
        ctx.tracker.answered(this.entry!);
        if (e.status !== 0 && this.reservation && !this.localStarted && statusErrno(e.status) === 'ENOSPC' && !ctx.peerDiskFailed) return this.bothFull();
        this.applyLocal();
        // A peer whose disk failed stores nothing: its answer, whatever it says, leaves the
        // change to this copy, marked out of sync for the resync to it later — unless this copy
        // is incomplete (a resync target): then no copy holds it, and it fails (bits set).
        if (ctx.peerDiskFailed) {
          const refused = this.path.alone.refusal();
          if (!refused) return this.markOutOfSync('peer-diskless');
          this.error ??= refused;
          return this.markOutOfSync('peer-failed');
        }
        if (e.status === 0) {
          this.peerHasIt = true;
          this.path.storedOnPeer(this.offset, this.length);
          this.step = 'PeerSettled';
          return this.maybeComplete();
        }
        // The peer could not apply it: the copies may differ there. Marked out of sync (durably)
        // before the client hears of the failure, so the next resync or verify repairs it.
        this.error ??= new MirrorError(MirrorCode.PEER_FAILED, `the peer failed the write (${statusErrno(e.status)})`, statusErrno(e.status));
        return this.markOutOfSync('peer-failed');
      case 'link-lost':
        if (this.step !== 'Mirroring') return; // the peer has answered already, or the bits are on their way
        // A write held for the peer's answer is this node's alone now: its units are reserved.
        this.applyLocal();
        return this.markOutOfSync('link-lost');
      case 'bits-durable':
        if (this.step === 'Degraded') {
          if (e.err) return this.complete(e.err);
          return ctx.tracker.apply(this.entry!, this.piece, (err) => this.on({ type: 'disk-done', err }));
        }
        this.error ??= e.err;
        if (this.outOfSync !== 'link-lost') {
          // Settled once the bits are durable (failed, if the peer failed it).
          this.step = 'PeerSettled';
          return this.maybeComplete();
        }
        // Link lost: acknowledged only with quorum, as a degraded write (see on 'quorum').
        this.step = 'AwaitingQuorum';
        return ctx.quorum.whenWritable((err) => this.on({ type: 'quorum', err }));
      case 'quorum': {
        // Let through because the peer is back, not because this node may write alone: the
        // write never reached the peer, and the resync just decided may copy the peer's data
        // over its bits. It fails, so no client counts on it; never acknowledged.
        let err = e.err;
        if (!err && ctx.peer.connected) err = new MirrorError(MirrorCode.HELD_TOO_LONG, 'the peer came back before this write could be acknowledged alone');
        err ??= this.path.alone.refusal();
        // Only a write acknowledged alone makes a new generation; one failed for want of quorum
        // leaves it alone, so the resync from the holder covers its bits.
        if (!err) this.path.alone.wroteAlone();
        this.error ??= err;
        this.step = 'PeerSettled';
        return this.maybeComplete();
      }
    }
  }

  /** Asked for without the peer: only with quorum (the gate holds or fails the write). */
  ask(): void {
    const ctx = this.path.ctx;
    if (this.logged) return ctx.meta.activityLog.begin(this.offset, this.length, (err) => this.path.ready(this, err));
    let decided = false;
    ctx.quorum.whenWritable((err) => {
      // Held, then let through because the peer is back: by now the client may have given up
      // on this request and written the same blocks through the other node; applying it late
      // could overwrite that newer data on both. It fails instead (never acknowledged).
      if (!err && this.heldForQuorum && ctx.peer.connected) err = new MirrorError(MirrorCode.HELD_TOO_LONG, 'held without quorum until the peer came back; not applied');
      decided = true;
      this.path.ready(this, err);
    });
    this.heldForQuorum = !decided;
  }

  /** Its turn came (in the order the changes were asked for). */
  private started(err: Error | null): void {
    const ctx = this.path.ctx;
    const al = ctx.meta.activityLog;
    if (err) {
      if (this.logged) al.end(this.offset, this.length);
      return this.complete(err);
    }
    if (!ctx.peer.connected) {
      const askedConnected = this.logged;
      if (this.logged) al.end(this.offset, this.length);
      this.logged = false;
      const refused = this.path.alone.refusal();
      if (refused) return this.complete(refused);
      if (!askedConnected) return this.degraded();
      // Asked for while the peer was there, its turn came after the link was lost: it goes on
      // alone only with quorum, as one asked for without the peer does (`ask`). A node that hung
      // and wakes up to the requests still in its sockets must not acknowledge them, nor start a
      // new generation for them: the peer may hold the grant, and its copy is the one that counts.
      return ctx.quorum.whenWritable((err) => {
        if (!err && ctx.peer.connected) err = new MirrorError(MirrorCode.HELD_TOO_LONG, 'its turn came without the peer, which came back before quorum was decided; not applied');
        if (err) return this.complete(err);
        this.degraded();
      });
    }
    // Connected again while this change waited behind others: log it first after all.
    if (!this.logged) {
      this.logged = true;
      this.step = 'Queued';
      return this.path.queue(this);
    }
    // The peer's disk failed and this copy is incomplete: no copy could hold it (see refusal).
    const refused = ctx.peerDiskFailed ? this.path.alone.refusal() : null;
    if (refused) {
      al.end(this.offset, this.length);
      return this.complete(refused);
    }
    // A thin volume reserves the units this write needs here before the peer is asked: if
    // there are none, the write fails now, changed nowhere.
    const reserved = this.data && ctx.local.reserve ? ctx.local.reserve(this.data, this.offset) : null;
    if (reserved instanceof Error) {
      al.end(this.offset, this.length);
      this.logged = false;
      return this.complete(reserved);
    }
    this.reservation = reserved;
    // Tracked and sent in one step, as the overlap rule needs.
    this.step = 'Mirroring';
    this.entry = ctx.track(this.offset, this.length, 'local', ctx.nextId());
    this.path.sent(this);
    // The body names the volume by its wire index as of now: a change that waited across a new
    // link (volumes renumbered after some were created or deleted online) carries the new one.
    (Buffer.isBuffer(this.frame) ? this.frame : this.frame[0]!).writeUInt32BE(ctx.index, 0);
    ctx.peer.send(this.type, this.entry.id, this.frame);
    // The peer's copy goes out first: its round trip then overlaps with the local write. One
    // that allocates here waits for the peer's answer instead (see the file comment).
    if (!this.reservation) ctx.peer.afterSend(() => this.applyLocal());
  }

  /** Applies the change to the local volume (once). */
  private applyLocal(): void {
    if (this.localStarted) return;
    this.localStarted = true;
    this.path.ctx.tracker.apply(this.entry!, this.piece, (e) => {
      this.reservation?.release();
      this.on({ type: 'disk-done', err: e });
    });
  }

  /** The peer's pool is full too, or alone: the write fails on both nodes, neither copy changed. */
  private bothFull(): void {
    const ctx = this.path.ctx;
    this.reservation!.release();
    this.localStarted = true;
    ctx.tracker.landed(this.entry!); // nothing to wait for: later overlapping changes go on
    this.diskDone = true;
    this.error ??= new MirrorError(MirrorCode.PEER_FAILED, "the peer's thin pool is full: the write failed on both nodes, neither copy changed", 'ENOSPC');
    this.step = 'PeerSettled';
    this.maybeComplete();
  }

  /** Without the peer, with quorum: tracked, its bits made durable, then applied here. */
  private degraded(): void {
    const ctx = this.path.ctx;
    this.step = 'Degraded';
    this.entry = ctx.track(this.offset, this.length, 'local', ctx.nextId());
    this.path.alone.wroteAlone();
    const [first, count] = ctx.grains(this.offset, this.length);
    ctx.meta.markDirty(first, count, (e) => this.on({ type: 'bits-durable', err: e }));
  }

  private markOutOfSync(cause: NonNullable<MirroredWrite['outOfSync']>): void {
    this.outOfSync = cause;
    this.step = 'MarkingOutOfSync';
    const [first, count] = this.path.ctx.grains(this.offset, this.length);
    this.path.ctx.meta.markDirty(first, count, (err) => this.on({ type: 'bits-durable', err }));
  }

  private maybeComplete(): void {
    if (!this.diskDone || this.step !== 'PeerSettled') return;
    const lost = this.localError;
    if (!lost) return this.complete();
    if (isPoolFull(lost)) return this.localFull(lost);
    if (!this.peerHasIt) return this.complete(new MirrorError(MirrorCode.LOCAL_FAILED, `the local disk failed the write (${lost.message}) and the peer does not hold it`, errnoName(lost)));
    // The peer holds it: this disk is given up (Failed) and the write succeeds.
    this.path.ctx.diskFailed(lost, 'a client write', this.offset, this.length);
    this.complete();
  }

  /**
   * This node's pool had no unit for a change it did not reserve for (its mapping changed under
   * it): no disk failure. If the peer stored it, the range is marked out of sync here (the next
   * resync repairs it) and the write fails with ENOSPC.
   */
  private localFull(lost: Error): void {
    const err = new MirrorError(MirrorCode.LOCAL_FAILED, `this node's thin pool is full (${lost.message})`, 'ENOSPC');
    if (!this.peerHasIt) return this.complete(err);
    const [first, count] = this.path.ctx.grains(this.offset, this.length);
    this.path.ctx.meta.markDirty(first, count, () => this.complete(err));
  }

  private complete(err: Error | null = null): void {
    this.error ??= err;
    const wasLogged = this.logged && this.step !== 'Queued';
    this.step = 'Completed';
    this.path.finished(this);
    if (this.entry) this.path.ctx.tracker.untrack(this.entry);
    if (wasLogged) this.path.ctx.meta.activityLog.end(this.offset, this.length);
    this.done(this.error);
  }
}

/**
 * The writes and flushes of one volume: the queue that starts changes in the order they were
 * asked for, the open requests by id (routing the peer's answers), and the acknowledgement
 * timeout: a write or flush the peer leaves unanswered past it resets the link (a peer that
 * answers heartbeats but no longer its requests must not hold client writes for ever; the
 * link-loss path then makes them degraded writes — DRBD's ko-count idea).
 */
/**
 * The peer is asked to flush (an epoch flush, DRBD's barrier) once this much it stored is not
 * durable there yet: what a power cut of the peer could take, and what link loss marks out of
 * sync here, stays bounded.
 */
const EPOCH = { bytes: 64 * 1024 * 1024, writes: 4096 } as const;

export class WritePath {
  /** Mirrored changes waiting for their turn, in the order they were asked for. */
  private readonly queued: Array<{ w: MirroredWrite; ready: boolean; err: Error | null }> = [];
  private readonly open = new Map<bigint, MirroredWrite>();
  /** Flushes sent to the peer: id → who waits, and whether for a client (else this node's own: epoch, activity log). */
  private readonly flushes = new Map<bigint, { readonly done: Done; readonly client: boolean }>();
  /** Writes and flushes sent to the peer and not answered yet: id → when sent (oldest first). */
  private readonly awaitingPeer = new Map<bigint, number>();
  private ackWatch: NodeJS.Timeout | undefined;
  /**
   * Changes the peer stored but has not made durable yet (no FLUSH_ACK for a flush sent after
   * them): a power cut there may lose them, so when the link is lost they are marked out of sync
   * here (DRBD's transfer log). Pruned by every answered flush, and bounded by epoch flushes.
   */
  private readonly notDurableOnPeer: Array<{ readonly seq: number; readonly offset: number; readonly length: number }> = [];
  private notDurableBytes = 0;
  private storedSeq = 0;
  /** Flushes sent to the peer: id → the last stored change they cover. */
  private readonly flushCovers = new Map<bigint, number>();
  private epochFlushing = false;

  constructor(
    readonly ctx: MirrorContext,
    readonly alone: AlonePolicy,
    private readonly ackTimeoutMs: number,
  ) {}

  /** No change waiting for its turn or for the peer's answer (an online resize waits for this). */
  get idle(): boolean {
    return this.queued.length === 0 && this.open.size === 0;
  }

  /** A write, trim or zero: `piece` applies [from, to) of it to the local volume. */
  change(type: PeerMsg, frame: Buffer | readonly Buffer[], offset: number, length: number, piece: Piece, done: Done, data?: Buffer): void {
    const start = (): void => this.queue(new MirroredWrite(this, type, frame, offset, length, piece, done, data));
    const { local } = this.ctx;
    // A thin pool set to hold writes when full: a write that needs units waits for them before
    // it takes its place among the changes (the others go on meanwhile); ENOSPC if none come.
    if (!data || !local.waitForSpace) return start();
    local.waitForSpace(data, offset, (err) => (err ? done(err) : start()));
  }

  /** @internal MirroredWrite: waits for its turn. */
  queue(w: MirroredWrite): void {
    const turn = { w, ready: false, err: null as Error | null };
    this.queued.push(turn);
    w.ask();
  }

  /** @internal MirroredWrite: its extents are durable (or its quorum answer came). */
  ready(w: MirroredWrite, err: Error | null): void {
    const turn = this.queued.find((t) => t.w === w && !t.ready);
    if (!turn) return;
    turn.ready = true;
    turn.err = err;
    // Changes start in the order they were asked for, even when a later one's extents were logged first.
    while (this.queued[0]?.ready) {
      const t = this.queued.shift()!;
      t.w.on({ type: 'turn', err: t.err });
    }
  }

  /** @internal MirroredWrite: sent to the peer, which must answer within the ack timeout. */
  sent(w: MirroredWrite): void {
    this.open.set(w.entry!.id, w);
    this.expectAnswer(w.entry!.id);
  }

  /** @internal */
  answered(id: bigint): void {
    this.awaitingPeer.delete(id);
  }

  /** @internal */
  finished(w: MirroredWrite): void {
    if (w.entry) this.open.delete(w.entry.id);
  }

  /** @internal MirroredWrite: the peer stored [offset, offset + length) (not durably yet). */
  storedOnPeer(offset: number, length: number): void {
    this.notDurableOnPeer.push({ seq: ++this.storedSeq, offset, length });
    this.notDurableBytes += length;
    if (this.epochFlushing || (this.notDurableBytes < EPOCH.bytes && this.notDurableOnPeer.length < EPOCH.writes)) return;
    this.epochFlushing = true;
    this.sendFlush(() => (this.epochFlushing = false), false);
  }

  /** Asks the peer to flush; `done` gets its answer. The changes stored before it then count as durable there. */
  private sendFlush(done: Done, client: boolean): bigint {
    const id = this.ctx.nextId();
    this.flushes.set(id, { done, client });
    this.flushCovers.set(id, this.storedSeq);
    this.expectAnswer(id);
    this.ctx.peer.send(PeerMsg.FLUSH, id);
    return id;
  }

  /** WRITE_ACK from the peer. */
  onAck(id: bigint, status: number): void {
    this.open.get(id)?.on({ type: 'peer-ack', status });
  }

  /**
   * A flush of both copies. `client`: a client's FLUSH (a durability promise: without the peer
   * it needs quorum, flushAlone); else this node's own (an activity-log extent leaving the log),
   * which only needs what it covers durable here or marked durably out of sync.
   */
  flush(done: Done, client = true): void {
    const { peer, local } = this.ctx;
    if (!peer.connected) return this.flushAlone(done, client);
    // As for writes: it succeeds when one copy is durable and the other's failure is declared.
    let localErr: Error | null | undefined;
    let peerErr: Error | null | undefined;
    const settle = (): void => {
      if (localErr === undefined || peerErr === undefined) return;
      if (localErr && !peerErr) this.ctx.diskFailed(localErr, client ? 'a client flush' : 'a flush', 0, 0);
      done(localErr && peerErr ? localErr : peerErr);
    };
    this.sendFlush((err) => ((peerErr = err), settle()), client);
    local.flush((err) => ((localErr = err), settle()));
  }

  /**
   * A flush without the peer. What it covers may be durable on this copy only: changes the peer
   * stored and never made durable were marked out of sync here when the link went. So, like a
   * write acknowledged alone, it succeeds only when this copy may count alone (quorum), with those
   * bits durable, and a client's flush then starts a new generation, so the next resync copies
   * from here. Found by the power-cut chaos (witness-grant phase): a flush answered from the local
   * disk just after the link loss, both nodes cut, the peer restarted first, got the grant and
   * resynced its older copy over the flushed write. This node's own flushes (epoch, activity log)
   * promise nothing to a client: the local disk and those bits durable are all they need.
   */
  private flushAlone(done: Done, client: boolean): void {
    const { local, meta, quorum, peer } = this.ctx;
    local.flush((err) => {
      if (err) return done(err);
      meta.flushBitmap((err) => {
        if (err || !client) return done(err);
        quorum.whenWritable((err) => {
          // The peer is back. If the resync copies from here (or nothing is to copy), what this
          // flush covers is durable here and reaches the peer: answered — failing it would fail a
          // client's flush for nothing (seen: an ext4 fsync through attach at the peer's return).
          // Otherwise the resync may copy the peer's data over it (or has not been decided yet).
          if (!err && peer.connected) return done(this.alone.leads() ? null : new MirrorError(MirrorCode.HELD_TOO_LONG, 'the peer came back before this flush could be answered alone, and the copy it brings back is the one the pair resyncs from'));
          err ??= this.alone.refusal();
          if (!err) this.alone.wroteAlone();
          done(err);
        });
      });
    });
  }

  /** FLUSH_ACK from the peer. */
  onFlushAck(id: bigint, status: number): void {
    const f = this.flushes.get(id)?.done;
    this.flushes.delete(id);
    this.awaitingPeer.delete(id);
    const covers = this.flushCovers.get(id);
    this.flushCovers.delete(id);
    if (status === 0 && covers !== undefined) this.durableOnPeer(covers);
    // A peer whose disk failed said so first (DISK_FAILED): this copy alone counts then.
    f?.(status === 0 || this.ctx.peerDiskFailed ? null : new MirrorError(MirrorCode.PEER_FAILED, `the peer failed the flush (${statusErrno(status)})`, statusErrno(status)));
  }

  /**
   * The link is gone: every write still waiting for the peer becomes a degraded write (its bits
   * are made durable, then it completes with quorum); so do flushes waiting for the peer
   * (flushAlone).
   */
  peerLost(): void {
    this.awaitingPeer.clear(); // what waited for answers is settled below
    // What the peer may have lost, if it lost power: out of sync here, so the next resync copies
    // it. A graceful leave is no exception: writes sent before the peer's LEAVING arrived cross it
    // and reach a peer that may lose power before its closing flush (a few extents resynced after
    // a planned stop is the price).
    this.peerDiskless();
    this.flushCovers.clear();
    for (const w of [...this.open.values()]) w.on({ type: 'link-lost' });
    for (const [id, f] of this.flushes) {
      this.flushes.delete(id);
      this.flushAlone(f.done, f.client);
    }
  }

  /**
   * What the peer stored and never made durable is marked out of sync here: when the link is
   * lost (above), and at once when the peer's disk fails — its flushes reach no disk any more, and
   * this node's activity log could otherwise let go of those writes before a power cut (found by
   * the power-cut chaos: both nodes cut after the failure).
   */
  peerDiskless(): void {
    for (const c of this.notDurableOnPeer) {
      const [first, count] = this.ctx.grains(c.offset, c.length);
      this.ctx.meta.markDirty(first, count, () => undefined);
    }
    this.durableOnPeer(this.storedSeq);
  }

  /** The peer made every change up to `seq` durable. */
  private durableOnPeer(seq: number): void {
    let n = 0;
    while (n < this.notDurableOnPeer.length && this.notDurableOnPeer[n]!.seq <= seq) this.notDurableBytes -= this.notDurableOnPeer[n++]!.length;
    this.notDurableOnPeer.splice(0, n);
  }

  private expectAnswer(id: bigint): void {
    this.awaitingPeer.set(id, Date.now());
    this.ackWatch ??= setTimeout(this.checkAnswers, this.ackTimeoutMs / 4).unref();
  }

  /** Runs while requests wait for the peer: the oldest unanswered past the timeout resets the link. */
  private readonly checkAnswers = (): void => {
    this.ackWatch = undefined;
    const oldest = this.awaitingPeer.values().next();
    if (oldest.done) return;
    const waited = Date.now() - oldest.value;
    if (waited <= this.ackTimeoutMs) {
      this.ackWatch = setTimeout(this.checkAnswers, this.ackTimeoutMs / 4).unref();
      return;
    }
    this.ctx.log.warn({ waitedMs: waited, ackTimeoutMs: this.ackTimeoutMs, unanswered: this.awaitingPeer.size }, 'the peer answers heartbeats but not writes: resetting the link');
    this.ctx.peer.reset(`no answer to a write or flush for ${waited} ms (ack timeout ${this.ackTimeoutMs} ms)`);
  };
}
