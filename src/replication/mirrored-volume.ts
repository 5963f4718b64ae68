// A volume mirrored to the peer node (protocol C): the Volume the NBD server sees, put together
// from one module per job (docs/ARCHITECTURE.md "Replication engine"):
//   in-flight.ts       which change may touch the disk when (the overlap rule), pure
//   mirrored-write.ts  a client change's life: queued, mirrored, degraded, completed
//   peer-changes.ts    the peer's changes applied here
//   peer-receiver.ts   every peer frame checked against the table, then its handler
//   resync-source.ts / resync-target.ts, peer-reads.ts (a target's reads of ranges not copied)
//   verify.ts, volume-verify.ts  online verify (the run; both sides of one volume)
//   replication-state.ts  the declared replication and disk states
//
// Resync (after the link returns): both nodes send their dirty runs and merge the other's, so
// both hold the union; the target then pulls every dirty range (resync-target.ts).
//
// Integrity: WRITE, RS_DATA, RS_DIFF and PEER_READ_DATA carry a sealed XXH3 digest of their
// data. A frame failing the check is never applied; it is asked for again, and a frame failing
// MAX_RESENDS times resets the link (writes waiting for the peer then complete as degraded
// writes, bits set).
import { NbdErr } from '../protocol/constants.js';
import { NbdError } from '../protocol/errors.js';
import type { Done, Extent, Volume, VolumeCapabilities, ZeroOptions } from '../volume/volume.js';
import type { Hotpath } from '../hotpath/index.js';
import type { Logger } from '../log.js';
import { DiskState, type VolumeMeta } from '../meta/volume-meta.js';
import { BlockComparer } from './block-compare.js';
import { NO_GENERATION, startTracking } from './generation.js';
import { MirrorContext, type PeerPort, type QuorumPort } from './mirror-context.js';
import { DetachedDisk } from './detached-disk.js';
import { errnoName, MirrorCode, MirrorError } from './mirror-errors.js';
import { WritePath } from './mirrored-write.js';
import { localAppliers, PeerChanges, type Appliers } from './peer-changes.js';
import type { VolumePhase } from './peer-frames.js';
import { answerPeerRead, PeerReads } from './peer-reads.js';
import { PeerReceiver } from './peer-receiver.js';
import { DEFAULT_RATE, RateLimiter, type RatePolicy } from './rate-limit.js';
import { VolumeState, type ReplicationState } from './replication-state.js';
import { ResyncRun, type ResyncProgress, type ResyncRole } from './resync.js';
import { ResyncSource } from './resync-source.js';
import { ResyncTarget } from './resync-target.js';
import type { VerifyReport } from './verify.js';
import { VolumeVerify } from './volume-verify.js';
import { decodeRuns, encodeChange, encodeRange, encodeStatus, encodeWriteHeader, PeerMsg, sealDigest, statusErrno, type FrameHeader } from './peer-protocol.js';

export type { PeerPort, QuorumPort } from './mirror-context.js';
export { MAX_RESENDS } from './mirror-context.js';
export type { ResyncProgress } from './resync.js';

export interface MirroredVolumeOptions {
  readonly local: Volume;
  readonly meta: VolumeMeta;
  readonly peer: PeerPort;
  /** Index of the volume on the wire (sorted names, the same on both nodes). */
  readonly volumeIndex: number;
  readonly node: string;
  readonly peerName: string;
  /** Dirty-bitmap grain in bytes. */
  readonly grain: number;
  /** Digests for integrity checks (WASM XXH3). */
  readonly hot: Hotpath;
  readonly log: Logger;
  /** Pacing of resync and verify (default: unlimited, 16 MiB/s while clients are busy). */
  readonly rate?: RatePolicy;
  /** The peer asks for a resync now (after a verify with repair), this node in `role`. */
  onResyncAsked?(role: ResyncRole): void;
  /** May this node write (and read) without its peer? Default: always (no witness). */
  readonly quorum?: QuorumPort;
  /** A write or flush the peer has not answered within this long resets the link (default 10 s). */
  readonly ackTimeoutMs?: number;
}

const DEFAULT_ACK_TIMEOUT_MS = 10_000;

const ALWAYS: QuorumPort = { writable: true, readable: true, whenWritable: (cb) => cb(null), whenReadable: (cb) => cb(null) };

type Running = { role: 'source'; run: ResyncRun; source: ResyncSource } | { role: 'target'; run: ResyncRun; target: ResyncTarget };

/** What a volume growing online holds back (MirroredVolume.grow). */
interface Held {
  readonly changes: Array<() => void>;
  readonly frames: Array<{ h: FrameHeader; body: Buffer }>;
}

/** With the peer back, in these states this copy leads: the resync copies from it, or nothing is to copy (AlonePolicy.leads). */
const LEADING: ReadonlySet<ReplicationState> = new Set(['SyncSource', 'Connected']);
/**
 * The peer's frames a volume growing online lets through: answers, which this node's own changes
 * in flight wait for (and the growth waits for those). Everything else — its changes, which
 * touch the in-flight tracker and the dirty bits, and its flushes, which must not overtake them —
 * is held, in order.
 */
const PASSED_WHILE_GROWING: ReadonlySet<number> = new Set([PeerMsg.WRITE_ACK, PeerMsg.FLUSH_ACK, PeerMsg.PEER_READ_DATA]);

export class MirroredVolume implements Volume {
  readonly capabilities: VolumeCapabilities;
  /** The declared replication and disk states (replication-state.ts). */
  readonly state: VolumeState;
  private readonly ctx: MirrorContext;
  private readonly apply: Appliers;
  private readonly writes: WritePath;
  private readonly changes: PeerChanges;
  private readonly reads: PeerReads;
  private readonly receiver: PeerReceiver;
  private running: Running | undefined;
  private readonly verifier: VolumeVerify;
  /**
   * The bitmap names every grain this copy lacks: set once a resync's runs were merged (before,
   * a copy that is not up to date cannot tell which of its ranges are old).
   */
  private bitsNameStaleRanges = false;
  /**
   * A resync into this copy started in this process and has not finished: its copy is partial
   * even if it was brand new (a new volume as the target of a full sync).
   */
  private partialCopy = false;
  /**
   * The peer, whose disk failed, wrote without this copy before (its generation is newer): this
   * copy is behind everywhere it may have written, and no bits here say where. Until the link is lost.
   */
  private behindPeer = false;
  /**
   * While the volume grows online (grow): client changes and peer frames held, in order, until
   * the metadata has its new size. Reads go on (they touch no metadata).
   */
  private held: Held | undefined;
  /** How long an online resize waits for the changes in flight (half the ack timeout: the peer waits for its answer that long). */
  private readonly drainLimitMs: number;
  /** Reads waiting for the source's dirty runs. */
  private readsWaitingForRuns: Array<() => void> = [];

  constructor(o: MirroredVolumeOptions) {
    // FAST_ZERO is offered as the local volume offers it; see zero().
    this.capabilities = o.local.capabilities;
    this.ctx = new MirrorContext({
      local: o.local,
      meta: o.meta,
      peer: o.peer,
      index: o.volumeIndex,
      grain: o.grain,
      hot: o.hot,
      log: o.log,
      rate: new RateLimiter(o.rate ?? DEFAULT_RATE),
      quorum: o.quorum ?? ALWAYS,
      localWinsOverlaps: o.node > o.peerName,
    });
    this.verifier = new VolumeVerify(this.ctx);
    this.ctx.onChange = (offset, end) => this.verifier.touch(offset, end);
    this.ctx.onDiskFailure = (err, during, offset, length) => this.diskFailed(err, during, offset, length);
    this.ctx.incomplete = () => this.stale();
    this.ctx.lacks = (offset, length) => this.lacks(offset, length);
    this.state = new VolumeState(
      o.log,
      () => o.meta.state,
      (state, rest) => o.meta.saveIdentity({ ...rest, state }),
    );
    this.apply = localAppliers(this.ctx);
    this.writes = new WritePath(this.ctx, { refusal: () => this.refusesWritesAlone(), wroteAlone: () => this.startTracking(), leads: () => LEADING.has(this.state.replication) && !this.stale() }, o.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS);
    this.drainLimitMs = (o.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS) / 2;
    this.changes = new PeerChanges(this.ctx, this.apply);
    this.reads = new PeerReads(this.ctx);
    const source = (): ResyncSource => (this.running as Extract<Running, { role: 'source' }>).source;
    const target = (): ResyncTarget | undefined => (this.running?.role === 'target' ? this.running.target : undefined);
    this.receiver = new PeerReceiver(this.ctx, () => this.phase(), {
      [PeerMsg.WRITE]: (h, b) => this.changes.onWrite(h.id, b),
      [PeerMsg.TRIM]: (h, b) => this.changes.onChange(PeerMsg.TRIM, h.id, b),
      [PeerMsg.ZERO]: (h, b) => this.changes.onChange(PeerMsg.ZERO, h.id, b),
      [PeerMsg.FLUSH]: (h) => this.changes.onFlush(h.id),
      [PeerMsg.WRITE_ACK]: (h, b) => this.writes.onAck(h.id, b.readUInt32BE(0)),
      [PeerMsg.FLUSH_ACK]: (h, b) => this.writes.onFlushAck(h.id, b.readUInt32BE(0)),
      [PeerMsg.BITMAP_RUNS]: (h, b) => this.onPeerRuns(h.flags, b),
      [PeerMsg.RS_REQUEST]: (h, b) => source().onRequest(h.id, b),
      [PeerMsg.RS_CSUM_REQUEST]: (h, b) => source().onChecksumRequest(h.id, b),
      [PeerMsg.RS_HOLES_REQUEST]: (h, b) => source().onHolesRequest(h.id, b),
      [PeerMsg.RS_HOLES]: (h, b) => target()?.onHoles(h.id, b),
      [PeerMsg.RS_ACK]: (_h, b) => source().onAck(b),
      [PeerMsg.RS_DONE]: () => this.endResync(null),
      [PeerMsg.PEER_READ]: (h, b) => answerPeerRead(this.ctx, h.id, b),
      [PeerMsg.PEER_READ_DATA]: (h, b) => this.reads.onData(h.id, b),
      [PeerMsg.RS_DATA]: (h, b) => this.onResyncData(target(), h, b),
      [PeerMsg.RS_DIFF]: (h, b) => this.onResyncData(target(), h, b),
      [PeerMsg.VERIFY_REQUEST]: (h, b) => this.verifier.onRequest(h.id, b),
      [PeerMsg.VERIFY_DIGESTS]: (h, b) => this.verifier.onDigests(h.id, b),
      [PeerMsg.VERIFY_HOLES_REQUEST]: (h, b) => this.verifier.onHolesRequest(h.id, b),
      [PeerMsg.VERIFY_HOLES]: (h, b) => this.verifier.onHoles(h.id, b),
      [PeerMsg.RESYNC_NOW]: (_h, b) => o.onResyncAsked?.(b.readUInt32BE(0) === 1 ? 'source' : 'target'),
      [PeerMsg.DISK_FAILED]: (_h, b) => this.markPeerDiskFailed(`the peer's disk failed (${statusErrno(b.readUInt32BE(0))})`),
    });
    this.state.setReplication('Connecting', 'started');
  }

  get size(): number {
    return this.ctx.size;
  }

  /**
   * Grows the volume while it is served (an online resize, both nodes in turn): new changes and
   * the peer's (all but its answers: PASSED_WHILE_GROWING) are held, the changes in flight finish, the data is flushed and the bitmap
   * written back; then `growData` grows the data and the metadata takes the new size (a larger
   * bitmap, the activity log moved: VolumeMeta.growOpen); then what was held goes on. Clients
   * keep the size they negotiated; new connections see the new one (NBD has no way to tell a
   * connected client that the size changed).
   */
  grow(size: number, growData: () => void, done: (err: Error | null) => void): void {
    if (this.held) return done(new Error('a resize of this volume is already running'));
    const held: Held = { changes: [], frames: [] };
    this.held = held;
    const started = Date.now();
    const resume = (err: Error | null): void => {
      this.held = undefined;
      for (const f of held.frames) this.handleFrame(f.h, f.body);
      for (const c of held.changes) c();
      done(err);
    };
    const whenDrained = (): void => {
      if (!this.writes.idle || this.ctx.tracker.size > 0) {
        if (Date.now() - started > this.drainLimitMs) return resume(new Error(`changes in flight did not finish within ${this.drainLimitMs} ms; not resized`));
        return void setTimeout(whenDrained, 2);
      }
      // A resync started meanwhile (a new link) walks the old bitmap: not now.
      if (this.running) return resume(new Error('a resync started; not resized'));
      // The data durable before the activity log is emptied; the bitmap written back before it moves.
      this.ctx.local.flush((err) => {
        if (err) return resume(err);
        this.ctx.meta.flushBitmap((err) => {
          if (err) return resume(err);
          try {
            growData();
            this.ctx.meta.growOpen(size, this.ctx.hot);
            this.ctx.size = size;
          } catch (e) {
            return resume(e as Error);
          }
          this.ctx.log.info({ size, heldMs: Date.now() - started, heldChanges: held.changes.length, heldFrames: held.frames.length }, 'volume grown online');
          resume(null);
        });
      });
    };
    whenDrained();
  }

  /** Index of the volume on the wire (mirror-context.ts). */
  get volumeIndex(): number {
    return this.ctx.index;
  }

  /** Numbers the volume for a new link (cluster-node.ts, at each connection: sorted names). */
  renumber(index: number): void {
    this.ctx.renumber(index);
  }

  /** Gives back the hot-path memory of its digest lists: the volume is deleted or reopened (after stopped()). */
  release(): void {
    this.ctx.compare.release();
  }

  /** Hot-path memory a mirrored volume needs besides its bitmap. */
  static sizing(grain: number): { digests: number; digestLists: number } {
    return BlockComparer.sizing(grain);
  }

  get replication(): ReplicationState {
    return this.state.replication;
  }

  /** The peer said its disk failed (until the link is lost). */
  get peerDiskFailed(): boolean {
    return this.ctx.peerDiskFailed;
  }

  /** Data frames from the peer that failed their digest check, since start-up. */
  get integrityErrors(): number {
    return this.ctx.counters.integrityErrors;
  }

  /** Bytes copied by resyncs since start-up (sent as source or written as target). */
  get resyncedBytesTotal(): number {
    return this.ctx.counters.resyncedBytes;
  }

  /** Data bytes resync moved over the link; with checksum resync, less than the ranges covered. */
  get resyncWireBytesTotal(): number {
    return this.ctx.counters.resyncWireBytes;
  }

  /** Paces resync and verify; told about every client request. */
  get rate(): RateLimiter {
    return this.ctx.rate;
  }

  /**
   * Reads are local, except on a copy that is not up to date (a resync target, or one cut short):
   * ranges not copied yet are read from the peer, and while a resync's runs are still coming
   * reads wait for them, so nothing stale is served. Without the peer, reads of ranges this copy
   * lacks fail (EIO) rather than return old data.
   */
  read(buf: Buffer, offset: number, done: Done): void {
    this.ctx.rate.clientIo();
    const { quorum, local } = this.ctx;
    if (!quorum.readable) return quorum.whenReadable((err) => (err ? done(err) : this.read(buf, offset, done)));
    if (this.state.disk === 'Failed') return this.ctx.peer.connected ? this.reads.read(buf, offset, done) : local.read(buf, offset, done);
    if (!this.stale()) return local.read(buf, offset, this.orFromPeer(buf, offset, done));
    const r = this.running;
    if (r?.role === 'target' && !r.run.peerRunsIn) return void this.readsWaitingForRuns.push(() => this.read(buf, offset, done));
    if (!this.lacks(offset, buf.length)) return local.read(buf, offset, done);
    this.reads.read(buf, offset, done);
  }

  /** This copy may lack the range: it is stale and its bits do not clear it (see read). */
  private lacks(offset: number, length: number): boolean {
    if (!this.stale()) return false;
    if (this.behindPeer) return true;
    const [first, count] = this.ctx.grains(offset, length);
    return !this.bitsNameStaleRanges || this.ctx.meta.bitmap.any(first, count);
  }

  /** A local read that fails gives the disk up (Failed) and is served by the peer, if it is there. */
  private orFromPeer(buf: Buffer, offset: number, done: Done): Done {
    return (err) => {
      if (!err) return done(null);
      this.diskFailed(err, 'a client read', offset, buf.length);
      if (!this.ctx.peer.connected) return done(err);
      this.reads.read(buf, offset, done);
    };
  }

  /**
   * The local disk failed a request: it is given up until restart (DRBD's detach on I/O error).
   * The range is marked out of sync here (best effort) and on the peer, which is told first
   * (DISK_FAILED), so that from then on it marks every change out of sync and starts a new
   * generation: the next connection makes it the source. Reads go to the peer; a resync in
   * progress stops (the link is reset and the next connection decides again).
   */
  private diskFailed(err: Error, during: string, offset: number, length: number): void {
    const { ctx } = this;
    const markHere = (off: number, len: number): void => {
      const [first, count] = ctx.grains(off, len);
      ctx.meta.markDirty(first, count, () => undefined);
    };
    if (this.state.disk !== 'Failed') {
      this.state.setDisk('Failed', `the local disk failed ${during}: reads are served by the peer, writes go on to the peer`, {}, { err: err.message, code: errnoName(err), offset, length });
      ctx.local = new DetachedDisk(this.size, this.capabilities, err, markHere);
      ctx.meta.activityLog.freeze();
      if (ctx.peer.connected) ctx.peer.send(PeerMsg.DISK_FAILED, ctx.nextId(), encodeStatus(err));
      if (this.running) ctx.peer.reset('the local disk failed during a resync');
    }
    if (length === 0) return; // a flush: no range to mark
    markHere(offset, length);
    const [start, count] = ctx.grains(offset, length);
    if (ctx.peer.connected) ctx.sendRuns([{ start, length: count }], false);
  }

  /**
   * The peer's disk failed: this copy is the only good one; every change is marked out of sync.
   * Unless this copy is incomplete (a resync target: the failed disk was its source), or
   * `behind` (the peer's generation is newer: it wrote without this copy): then no
   * complete copy is left. This one keeps its state and generation, serves only the ranges it
   * holds and takes no writes (refusesWritesAlone), until the peer is back with a working disk
   * and the resync goes on from it.
   */
  markPeerDiskFailed(reason: string, behind = false): void {
    if (this.ctx.peerDiskFailed) return;
    this.ctx.peerDiskFailed = true;
    // An incomplete copy knows what it lacks (its bits), so only a complete one is marked behind.
    this.behindPeer = behind && !this.stale();
    this.writes.peerDiskless();
    if (this.stale()) {
      this.ctx.log.error({ reason }, 'the peer\'s copy failed and this one is incomplete: no complete copy is left; reads of ranges not resynced and all writes fail until the peer returns with a working disk');
      return;
    }
    this.ctx.log.warn({ reason }, 'the peer\'s copy failed: this node holds the only good copy and tracks every change for it');
    this.startTracking();
  }

  /** This copy is complete (not a resync target, nor one cut short): it can serve alone. */
  get complete(): boolean {
    return !this.stale();
  }

  /**
   * This copy may be older than the peer's where bits are set: a resync target, or a copy left
   * Inconsistent by one cut short (a new volume, never synced, holds nothing older).
   */
  private stale(): boolean {
    return this.behindPeer || this.partialCopy || (this.ctx.meta.state === DiskState.Inconsistent && !this.brandNew);
  }

  write(buf: Buffer, offset: number, fua: boolean, done: Done): void {
    if (this.held) return void this.held.changes.push(() => this.write(buf, offset, fua, done));
    this.ctx.rate.clientIo();
    const flags = fua ? 1 : 0;
    const header = encodeWriteHeader({ volume: this.volumeIndex, flags, offset, digest: sealDigest(this.ctx.hot.digestOf(buf), offset, flags) });
    this.writes.change(PeerMsg.WRITE, [header, buf], offset, buf.length, this.apply.writer(buf, offset, fua), done, buf);
  }

  trim(offset: number, length: number, fua: boolean, done: Done): void {
    if (this.held) return void this.held.changes.push(() => this.trim(offset, length, fua, done));
    this.ctx.rate.clientIo();
    this.writes.change(PeerMsg.TRIM, encodeChange(this.volumeIndex, offset, length, fua ? 1 : 0), offset, length, this.apply.trimmer(fua), done);
  }

  zero(offset: number, length: number, opts: ZeroOptions, done: Done): void {
    if (this.held) return void this.held.changes.push(() => this.zero(offset, length, opts, done));
    // FAST_ZERO: refused here, before anything changes on either node, once this node's volume
    // has found it cannot zero quickly. Otherwise both nodes zero, and a node that finds itself
    // slow falls back to writing zeroes: the copies must match whatever the speed.
    if (opts.fastZero && this.ctx.local.zeroesFast?.() === false) return done(new NbdError(NbdErr.ENOTSUP, 'this node cannot zero quickly'));
    this.ctx.rate.clientIo();
    const flags = (opts.fua ? 1 : 0) | (opts.noHole ? 2 : 0);
    this.writes.change(PeerMsg.ZERO, encodeChange(this.volumeIndex, offset, length, flags), offset, length, this.apply.zeroer(flags), done);
  }

  flush(done: Done): void {
    this.writes.flush(done);
  }

  /**
   * Before an activity-log extent leaves the log: its writes durable on both copies, or — the
   * peer gone — here, with what the peer never made durable marked durably out of sync. Not a
   * client's flush: it needs no quorum and starts no generation.
   */
  flushForLog(done: Done): void {
    this.writes.flush(done, false);
  }

  cache(offset: number, length: number, done: Done): void {
    this.ctx.local.cache(offset, length, done);
  }

  /**
   * Allocation status, which clients use to skip reading holes: it must not describe old data
   * either. A node the witness declared outdated holds it like a read; a copy that is not up to
   * date reports the whole range as data (always allowed), so the client's reads come through
   * `read`, which fetches the ranges not copied yet from the peer, instead of trusting holes.
   */
  extents(offset: number, length: number, max: number, done: (err: Error | null, extents: Extent[]) => void): void {
    const { quorum } = this.ctx;
    if (!quorum.readable) return quorum.whenReadable((err) => (err ? done(err, []) : this.extents(offset, length, max, done)));
    if (this.stale()) return done(null, [{ length, flags: 0 }]);
    this.ctx.local.extents(offset, length, max, done);
  }

  /**
   * The NBD server is done with this volume. The file stays open: writes from the peer may still
   * arrive until the node has told it that it is leaving; the cluster node closes it after that.
   */
  close(): Promise<void> {
    return Promise.resolve();
  }

  /** Frames from the peer for this volume; the body is given back (peer.release) once used. */
  handleFrame(h: FrameHeader, body: Buffer): void {
    if (this.held && !PASSED_WHILE_GROWING.has(h.type)) return void this.held.frames.push({ h, body });
    this.receiver.handle(h, body);
  }

  /** What the receiver's table checks frames against. */
  private phase(): VolumePhase {
    return { resync: this.running?.role, peerRunsIn: this.running?.run.peerRunsIn ?? false };
  }

  /** The link is up and this volume mirrored, with nothing to copy. */
  connected(reason: string): void {
    this.state.setReplication('Connected', reason);
  }

  /** Not mirrored until an operator (or a policy) resolves it: this node serves on alone. */
  diverged(reason: string, facts: Record<string, unknown>): void {
    this.state.setReplication('Diverged', reason, facts);
  }

  /**
   * The link is gone: writes waiting for the peer become degraded writes, flushes complete
   * locally, resync and verify stop (their bits stay set), reads waiting for the peer fail.
   */
  peerLost(reason: string): void {
    // Frames of the lost link held by a resize: never to be answered.
    if (this.held) for (const f of this.held.frames.splice(0)) this.ctx.peer.release(f.body);
    this.ctx.peerDiskFailed = false; // told again in the next HELLO
    this.behindPeer = false;
    this.writes.peerLost();
    this.changes.peerLost();
    this.ctx.forgetResends();
    // Resync requests that will never be answered: release what waits on them; bits stay set.
    for (const e of this.ctx.tracker.filter((x) => x.origin === 'resync' && !x.onDisk)) this.ctx.tracker.release(e);
    const r = this.running;
    this.stopRun();
    this.reads.peerLost();
    // Reads that waited for the runs are decided again (now without a peer).
    for (const waiting of this.readsWaitingForRuns.splice(0)) waiting();
    this.ctx.rate.cancel();
    r?.run.onDone(new MirrorError(MirrorCode.NO_PEER, 'peer link lost during resync'));
    this.verifier.abort('peer link lost during verify');
    if (this.state.replication !== 'StandAlone') this.state.setReplication('Connecting', reason); // not while stopping
  }

  /** The node stops, or the volume is deleted: nothing more is mirrored. */
  stopped(reason = 'node stopping'): void {
    this.state.setReplication('StandAlone', reason);
  }

  /** Progress of a running resync, if any. */
  get resync(): ResyncProgress | undefined {
    return this.running?.run.progress;
  }

  /**
   * Starts a resync in the given role (decided by generation ids); `done` runs when all dirty
   * ranges are copied and both bitmaps are clear and durable.
   */
  startResync(role: ResyncRole, done: Done, checksum = false, reason = 'resync', facts: Record<string, unknown> = {}): void {
    if (!this.ctx.peer.connected) return done(new MirrorError(MirrorCode.NO_PEER, 'cannot resync without the peer'));
    const run = new ResyncRun(role, checksum, done);
    // A target's copy is partial until the last range is in: Inconsistent, durably, before any.
    if (role === 'target') this.state.setDisk('Inconsistent', 'resync target');
    if (role === 'source') {
      this.running = { role, run, source: new ResyncSource(this.ctx, run) };
    } else {
      this.running = { role, run, target: new ResyncTarget(this.ctx, run, (err) => this.endResync(err)) };
      this.bitsNameStaleRanges = false;
      this.partialCopy = true;
    }
    this.state.setReplication(role === 'source' ? 'SyncSource' : 'SyncTarget', reason, { ...facts, checksum });
    this.ctx.sendRuns(this.ctx.meta.bitmap.runs(0, Infinity), true);
  }

  /** BITMAP_RUNS: the peer's dirty runs, marked here too; the last of a resync's starts the copy. */
  private onPeerRuns(flags: number, body: Buffer): void {
    const { meta, grain } = this.ctx;
    for (const run of decodeRuns(body)) meta.markDirty(run.start, run.length, () => undefined);
    const r = this.running;
    if (!r || (flags & 1) === 0) return;
    r.run.peerRunsIn = true;
    this.bitsNameStaleRanges = true;
    // Both sides now hold the union of the dirty bits.
    r.run.totalBytes = meta.bitmap.count() * grain;
    for (const waiting of this.readsWaitingForRuns.splice(0)) waiting();
    if (r.role === 'target') r.target.runsIn();
  }

  /** RS_DATA / RS_DIFF: parsed (may throw: nothing written yet), then written by the target. */
  private onResyncData(target: ResyncTarget | undefined, h: FrameHeader, body: Buffer): void {
    const data = target?.parse(h.type, h.id, body);
    if (!target || !data) return this.ctx.peer.release(body); // an answer to a request given up on
    target.write(h.id, data, body);
  }

  /**
   * A resync ends: on the target when every range is copied (or a local write failed), on the
   * source when the target says it is done (RS_DONE) — the source cleared its bits on each RS_ACK.
   */
  private endResync(err: Error | null): void {
    const r = this.running;
    if (!r) return;
    this.stopRun();
    if (err) return r.run.onDone(err);
    if (r.role === 'target') {
      this.partialCopy = false;
      this.ctx.peer.send(PeerMsg.RS_DONE, this.ctx.nextId(), encodeRange(this.volumeIndex, 0, 0));
    }
    this.state.setReplication('Connected', 'resync finished');
    this.ctx.meta.flushBitmap(r.run.onDone);
  }

  private stopRun(): void {
    if (this.running?.role === 'target') this.running.target.active = false;
    this.running = undefined;
  }

  /**
   * Online verify (volume-verify.ts): compares every block with the peer while clients work. The
   * differing ranges are marked out of sync on both nodes (not repaired: see askResync).
   */
  verify(done: (err: Error | null, report: VerifyReport | undefined) => void): void {
    if (!this.ctx.peer.connected) return done(new MirrorError(MirrorCode.NO_PEER, 'cannot verify without the peer'), undefined);
    if (this.running) return done(new MirrorError(MirrorCode.BUSY, 'a resync is running; verify after it'), undefined);
    this.verifier.start(done);
  }

  /** Progress of a running verify, if any. */
  get verifying(): VerifyReport | undefined {
    return this.verifier.report;
  }

  /** Asks the peer to start a resync now with this node in `role` (the caller starts its own side). */
  askResync(role: ResyncRole): boolean {
    const body = Buffer.alloc(4);
    body.writeUInt32BE(role === 'source' ? 0 : 1); // the peer's role is the other one
    return this.ctx.peer.send(PeerMsg.RESYNC_NOW, this.ctx.nextId(), body);
  }

  /**
   * Why this copy may not take writes without its peer (gone, or its disk failed) now, or null.
   * An incomplete copy (a resync to it was cut short, or its source's disk failed) would have
   * changes of its own on top of partial data: the resync from the peer would overwrite them,
   * or it could become a resync source.
   */
  private refusesWritesAlone(): Error | null {
    if (this.state.disk === 'Failed') return new MirrorError(MirrorCode.LOCAL_FAILED, 'the local disk failed and the peer is gone: no copy would hold this write');
    if (!this.stale()) return null;
    return new MirrorError(MirrorCode.INCOMPLETE_COPY, 'this copy is incomplete (a resync into it has not finished): it takes writes only with a complete peer copy connected');
  }

  /** First write without the peer: new current generation, the bitmap counts from the old one. */
  private startTracking(): void {
    const { meta } = this.ctx;
    const g = meta.generation;
    const next = startTracking(g);
    if (next === g) return;
    const withState = { generation: next, trackingSince: Date.now() };
    // A brand-new node writing alone holds the only copy of its data: up to date by definition.
    if (this.brandNew) this.state.setDisk('UpToDate', 'a new volume written without its peer: the only copy', withState);
    else meta.saveIdentity(withState);
  }

  /**
   * Never synced with anything and never written alone (a fresh volume: a new cluster, or a
   * replaced disk). It serves alone only as the witness allows (quorum.ts brandNew).
   */
  get brandNew(): boolean {
    const { meta } = this.ctx;
    const g = meta.generation;
    return meta.state === DiskState.Inconsistent && g.bitmap === NO_GENERATION && g.history[0] === NO_GENERATION;
  }
}
