// A volume mirrored to the peer node (protocol C): a write completes only when it is on both
// nodes, or — with the peer gone — once the dirty bits covering it are durable here.
//
// Overlapping writes racing on both nodes. A write is "in flight" on a node from when it starts
// (local) or arrives (from the peer) until its WRITE_ACK is received (local) or sent (peer).
// Two overlapping writes from different nodes that are in flight together are concurrent, and
// over the link's FIFO order both nodes see the same pairs as concurrent. For such a pair the
// write of the node whose name sorts LATER lands last on both nodes:
//   - the winner's write waits until the loser's write is on disk, then is written in full;
//   - the loser's write skips the bytes it shares with the winner's.
// Writes from the same node that overlap are applied in the order they started.
//
// Resync (after the link returns): both nodes send their dirty runs and merge the other's, so
// both hold the union. The target pulls each dirty range: it tracks the request like a write
// (later writes to the range wait for its data), the source answers once every earlier write to
// the range is on disk, and writes that start later on either node are ordered after the
// resync data on both nodes (FIFO link). The target clears its bits when the data is written,
// the source when the target acknowledges it.
//
// Integrity: WRITE, RS_DATA and PEER_READ_DATA carry a sealed XXH3 digest of their data. A frame
// that fails the check is never applied: a WRITE stays tracked in its place in the order of
// overlapping writes and is answered with STATUS_RESEND, so the sender sends it again; resync
// data and peer-read data are asked for again. A frame failing MAX_RESENDS times resets the link
// (the writes waiting for the peer then complete as degraded writes, bits set).
import { NbdErr } from '../protocol/constants.js';
import { NbdError } from '../protocol/errors.js';
import type { Done, Extent, Volume, VolumeCapabilities, ZeroOptions } from '../volume/volume.js';
import type { Hotpath } from '../hotpath/index.js';
import type { Logger } from '../log.js';
import { DiskState, type VolumeMeta } from '../meta/volume-meta.js';
import { BlockComparer } from './block-compare.js';
import { checkVolumeFrame } from './peer-frames.js';
import { NO_GENERATION, startTracking } from './generation.js';
import { DEFAULT_RATE, RateLimiter, type RatePolicy } from './rate-limit.js';
import { VerifyRun, type VerifyReport } from './verify.js';
import {
  decodeRange,
  decodeWriteHeader,
  encodeDigest,
  encodeRange,
  encodeWriteHeader,
  MAX_RESYNC_RANGE,
  PEER_READ_DATA_HEADER_SIZE,
  PeerMsg,
  RANGE_SIZE,
  readDigest,
  RS_DATA_HEADER_SIZE,
  sealDigest,
  STATUS_RESEND,
  WRITE_HEADER_SIZE,
  type FrameHeader,
} from './peer-protocol.js';

/** What the mirrored volume needs of the peer link. */
export interface PeerPort {
  readonly connected: boolean;
  send(type: PeerMsg, id: bigint, body?: Buffer | readonly Buffer[], flags?: number): boolean;
  /** Runs `fn` once the frames sent so far are on their way (the link batches them per turn). */
  afterSend(fn: () => void): void;
  /** Drops the link (it reconnects): for a peer whose frames keep failing their checks. */
  reset(reason: string): void;
  /** Gives back a frame body handed to handleFrame once it is no longer used. */
  release(body: Buffer): void;
}

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
  onResyncAsked?(role: 'source' | 'target'): void;
  /** May this node write (and read) without its peer? Default: always (no witness). */
  readonly quorum?: QuorumPort;
  /**
   * A write or flush the peer has not answered within this long resets the link (default 10 s):
   * a peer that answers heartbeats but no longer its requests (a hung disk) must not hold client
   * writes for ever; the link-loss path then makes them degraded writes (DRBD's ko-count idea).
   */
  readonly ackTimeoutMs?: number;
}

const DEFAULT_ACK_TIMEOUT_MS = 10_000;

/** What the mirrored volume asks of the quorum gate (src/replication/quorum.ts). */
export interface QuorumPort {
  readonly writable: boolean;
  readonly readable: boolean;
  whenWritable(cb: (err: Error | null) => void): void;
  whenReadable(cb: (err: Error | null) => void): void;
}

const ALWAYS: QuorumPort = { writable: true, readable: true, whenWritable: (cb) => cb(null), whenReadable: (cb) => cb(null) };

/** A data frame failing its digest this many times in a row resets the link. */
export const MAX_RESENDS = 3;

interface InFlight {
  readonly id: bigint;
  readonly offset: number;
  readonly end: number;
  readonly origin: 'local' | 'peer' | 'resync';
  /** Set once this write's bytes are in the local file. */
  onDisk: boolean;
  readonly whenOnDisk: Array<() => void>;
}

/** Largest range one resync request asks for (the peer refuses larger ones). */
const RESYNC_CHUNK = MAX_RESYNC_RANGE;
/** While clients are busy: smaller requests, so a client's write never queues behind much resync data. */
const RESYNC_CHUNK_BUSY = 256 * 1024;
/** Resync requests in flight at once. */
const RESYNC_WINDOW = 8;
/** A resync target makes copied data durable and clears its bits every this many bytes. */
const RESYNC_CHECKPOINT = 64 * 1024 * 1024;

/** A running resync (either role). */
interface ResyncRun extends ResyncProgress {
  peerRunsIn: boolean;
  cursor: number;
  requests: number;
  onDone: Done;
  /** Target: ranges written since the last checkpoint, not known durable yet (their RS_ACK waits). */
  unsynced: Array<{ id: bigint; offset: number; length: number }>;
  unsyncedBytes: number;
  /** Target: a checkpoint's fdatasync is running; later checkpoints wait for it. */
  syncing: boolean;
  afterSync: Array<() => void>;
  finishing: boolean;
}

export interface ResyncProgress {
  role: 'source' | 'target';
  /** Blocks are compared by digest first and only differing ones are copied. */
  checksum: boolean;
  totalBytes: number;
  doneBytes: number;
}

/** Resync data matched with the request it answers (see parseResyncData). */
interface ResyncData {
  readonly entry: InFlight;
  readonly r: ResyncRun;
  readonly range: { offset: number; length: number };
  readonly pieces: Array<{ offset: number; data: Buffer }>;
  /** RS_DIFF: its digest checked while parsing. */
  readonly intact: boolean;
  /** It names the range its request asked for. */
  readonly matches: boolean;
  readonly diff: boolean;
  /** RS_DATA: the sealed digest to check the data against. */
  readonly digest?: bigint;
}

/** Applies [from, to) of a change to the local volume. */
type Piece = (from: number, to: number, done: Done) => void;

/** TRIM/ZERO frame body: range, then flags u32 (1 = FUA, 2 = NO_HOLE). */
function changeBody(volume: number, offset: number, length: number, flags: number): Buffer {
  const b = Buffer.alloc(RANGE_SIZE + 4);
  encodeRange(volume, offset, length).copy(b);
  b.writeUInt32BE(flags, RANGE_SIZE);
  return b;
}

interface LocalWrite {
  readonly entry: InFlight;
  /** The frame, kept to send again if the peer finds it damaged. */
  readonly type: PeerMsg;
  readonly frame: Buffer | readonly Buffer[];
  diskDone: boolean;
  peerDone: boolean;
  /** The peer answered with an error; its bits are being made durable. */
  peerFailed?: boolean;
  error: Error | null;
  readonly done: Done;
}

export class MirroredVolume implements Volume {
  readonly size: number;
  readonly volumeIndex: number;
  /** Data frames from the peer that failed their digest check, since start-up. */
  integrityErrors = 0;
  private readonly local: Volume;
  private readonly meta: VolumeMeta;
  private readonly peer: PeerPort;
  private readonly grain: number;
  private readonly hot: Hotpath;
  private readonly log: Logger;
  /** Peer WRITEs that failed their check: tracked in place, waiting for the resend. */
  private readonly damagedWrites = new Map<bigint, InFlight>();
  /** Resends asked for per resync / peer-read request id. */
  private readonly rerequests = new Map<bigint, number>();
  readonly capabilities: VolumeCapabilities;
  private readonly inFlight: InFlight[] = [];
  private readonly localWrites = new Map<bigint, LocalWrite>();
  /** Mirrored changes waiting for their activity-log extents, in start order. */
  private readonly outgoing: Array<{ ready: boolean; go: () => void }> = [];
  private readonly flushes = new Map<bigint, Done>();
  /** Writes and flushes sent to the peer and not answered yet: id → when sent (oldest first). */
  private readonly awaitingPeer = new Map<bigint, number>();
  private readonly ackTimeoutMs: number;
  private ackWatch: NodeJS.Timeout | undefined;
  /** Request ids carry the volume index in their top 16 bits, so replies can be routed. */
  private nextId: bigint;
  private resyncState: ResyncRun | undefined;
  /** Data bytes resync moved over the link (sent as source, received as target); with checksum resync, less than the ranges covered. */
  resyncWireBytesTotal = 0;
  private readonly compare: BlockComparer;
  /** Paces resync and verify; told about every client request. */
  readonly rate: RateLimiter;
  private verifyRun: VerifyRun | undefined;
  private readonly onResyncAsked: ((role: 'source' | 'target') => void) | undefined;
  private readonly quorum: QuorumPort;
  /** Bytes copied by resyncs since start-up (sent as source or written as target). */
  resyncedBytesTotal = 0;
  /** This node's data may be older than the peer's where bits are set (a resync target). */
  private stale = false;
  /** The peer's dirty runs have been merged: the bitmap names every stale grain. */
  private unionKnown = false;
  /** Target reads waiting for the peer's dirty runs, or for the peer's data. */
  private readsWaitingForRuns: Array<() => void> = [];
  private readonly peerReads = new Map<bigint, { buf: Buffer; offset: number; done: Done }>();
  /** True when this node's writes win overlaps (its name sorts after the peer's). */
  private readonly winsOverlaps: boolean;

  constructor(o: MirroredVolumeOptions) {
    ({ local: this.local, meta: this.meta, peer: this.peer, grain: this.grain, hot: this.hot, log: this.log, volumeIndex: this.volumeIndex } = o);
    this.size = o.local.size;
    // FAST_ZERO is offered as the local volume offers it; see zero().
    this.capabilities = o.local.capabilities;
    this.winsOverlaps = o.node > o.peerName;
    this.ackTimeoutMs = o.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS;
    this.nextId = (BigInt(o.volumeIndex) << 48n) + 1n;
    this.compare = new BlockComparer(o.hot, o.grain);
    this.rate = new RateLimiter(o.rate ?? DEFAULT_RATE);
    this.onResyncAsked = o.onResyncAsked;
    this.quorum = o.quorum ?? ALWAYS;
  }

  /** Hot-path memory a mirrored volume needs besides its bitmap. */
  static sizing(grain: number): { digests: number; digestLists: number } {
    return BlockComparer.sizing(grain);
  }

  /**
   * Reads are local, except on a resync target: ranges not copied yet are read from the source,
   * and reads wait until the source's dirty runs have arrived, so nothing stale is served. A
   * target that loses its source before the copy is done fails reads of ranges it lacks (EIO)
   * rather than return old data.
   */
  read(buf: Buffer, offset: number, done: Done): void {
    this.rate.clientIo();
    if (!this.quorum.readable) return this.quorum.whenReadable((err) => (err ? done(err) : this.read(buf, offset, done)));
    if (!this.stale) return this.local.read(buf, offset, done);
    const r = this.resyncState;
    if (r && !r.peerRunsIn) return void this.readsWaitingForRuns.push(() => this.read(buf, offset, done));
    const [first, count] = this.grains(offset, buf.length);
    if (this.unionKnown && !this.meta.bitmap.any(first, count)) return this.local.read(buf, offset, done);
    const id = this.nextId++;
    this.peerReads.set(id, { buf, offset, done });
    if (!this.peer.send(PeerMsg.PEER_READ, id, encodeRange(this.volumeIndex, offset, buf.length))) {
      this.peerReads.delete(id);
      done(Object.assign(new Error('this range is not resynced yet and the peer is gone'), { code: 'EIO' }));
    }
  }

  /** Source: a read for the target's client, after earlier writes to the range are on disk. */
  private onPeerRead(id: bigint, body: Buffer): void {
    const range = decodeRange(body);
    const entry = this.track(range.offset, range.length, 'resync', id);
    this.afterEarlier(
      entry,
      this.peerTask('PEER_READ', () => {
        const data = Buffer.allocUnsafe(range.length);
        this.local.read(
          data,
          range.offset,
          this.peerTask('PEER_READ', (err) => {
            this.release(entry);
            const head = encodeRange(this.volumeIndex, range.offset, range.length);
            const sealed = encodeDigest(err ? 0n : sealDigest(this.hot.digestOf(data), range.offset));
            this.peer.send(PeerMsg.PEER_READ_DATA, id, err ? [head, status(err), sealed] : [head, status(err), sealed, data]);
          }),
        );
      }),
    );
  }

  private onPeerReadData(id: bigint, body: Buffer): void {
    const p = this.peerReads.get(id);
    if (!p) return;
    if (body.readUInt32BE(RANGE_SIZE) !== 0) {
      this.peerReads.delete(id);
      return p.done(new Error('the peer failed to read the range'));
    }
    const data = body.subarray(PEER_READ_DATA_HEADER_SIZE);
    const range = decodeRange(body);
    // An answer for other bytes than were asked for is never served: damaged, like a bad digest.
    const matches = range.offset === p.offset && range.length === p.buf.length;
    if (!matches) this.countDamage(id, p.offset, p.buf.length);
    if (!matches || !this.intact(id, data, p.offset, 0, readDigest(body, RANGE_SIZE + 4))) {
      // Ask again (same id): the answer replaces this one.
      this.peer.send(PeerMsg.PEER_READ, id, encodeRange(this.volumeIndex, p.offset, p.buf.length));
      return;
    }
    this.peerReads.delete(id);
    this.rerequests.delete(id);
    data.copy(p.buf);
    p.done(null);
  }

  write(buf: Buffer, offset: number, fua: boolean, done: Done): void {
    this.rate.clientIo();
    const flags = fua ? 1 : 0;
    const header = encodeWriteHeader({ volume: this.volumeIndex, flags, offset, digest: sealDigest(this.hot.digestOf(buf), offset, flags) });
    this.mirrorChange(PeerMsg.WRITE, [header, buf], offset, buf.length, this.writer(buf, offset, fua), done);
  }

  trim(offset: number, length: number, fua: boolean, done: Done): void {
    this.rate.clientIo();
    this.mirrorChange(PeerMsg.TRIM, changeBody(this.volumeIndex, offset, length, fua ? 1 : 0), offset, length, this.trimmer(fua), done);
  }

  zero(offset: number, length: number, opts: ZeroOptions, done: Done): void {
    // FAST_ZERO: refused here, before anything changes on either node, once this node's volume
    // has found it cannot zero quickly. Otherwise both nodes zero, and a node that finds itself
    // slow falls back to writing zeroes: the copies must match whatever the speed.
    if (opts.fastZero && this.local.zeroesFast?.() === false) return done(new NbdError(NbdErr.ENOTSUP, 'this node cannot zero quickly'));
    this.rate.clientIo();
    const flags = (opts.fua ? 1 : 0) | (opts.noHole ? 2 : 0);
    this.mirrorChange(PeerMsg.ZERO, changeBody(this.volumeIndex, offset, length, flags), offset, length, this.zeroer(flags), done);
  }

  /** Applies a piece [from, to) of a change to the local volume. */
  private writer(buf: Buffer, offset: number, fua: boolean): Piece {
    return (from, to, cb) => this.local.write(buf.subarray(from - offset, to - offset), from, fua, cb);
  }

  private trimmer(fua: boolean): Piece {
    return (from, to, cb) => this.local.trim(from, to - from, fua, cb);
  }

  private zeroer(flags: number): Piece {
    return (from, to, cb) => this.local.zero(from, to - from, { fua: (flags & 1) !== 0, noHole: (flags & 2) !== 0, fastZero: false }, cb);
  }

  /**
   * A write, trim or zero: on both nodes (protocol C), or locally after its bits are durable.
   * A mirrored change first gets its extents into the activity log (durably, when new). It
   * starts — is tracked and sent, in one step, as the overlap rule needs — only then, and changes
   * start in the order they were asked for even when a later one's extents were logged already.
   */
  private mirrorChange(type: PeerMsg, frame: Buffer | readonly Buffer[], offset: number, length: number, piece: Piece, done: Done): void {
    const al = this.meta.activityLog;
    const logged = this.peer.connected;
    let alError: Error | null = null;
    const turn = {
      ready: false,
      go: () => {
        if (alError) {
          if (logged) al.end(offset, length);
          return done(alError);
        }
        if (!this.peer.connected) {
          if (logged) al.end(offset, length);
          const incomplete = this.incompleteAlone();
          if (incomplete) return done(incomplete);
          return this.changeDegraded(this.track(offset, length, 'local', this.nextId++), piece, done);
        }
        // Connected again while this change waited behind others: log it first after all.
        if (!logged) return this.mirrorChange(type, frame, offset, length, piece, done);
        const entry = this.track(offset, length, 'local', this.nextId++);
        const w: LocalWrite = { entry, type, frame, diskDone: false, peerDone: false, error: null, done };
        this.localWrites.set(entry.id, w);
        this.sentToPeer(entry.id);
        this.peer.send(type, entry.id, frame);
        // The peer's copy goes out first: its round trip then overlaps with the local write.
        this.peer.afterSend(() =>
          this.applyLocal(entry, piece, (e) => {
            w.diskDone = true;
            w.error ??= e;
            this.maybeFinish(w);
          }),
        );
      },
    };
    this.outgoing.push(turn);
    // Without the peer: only with quorum (the gate holds or fails the write otherwise).
    if (!logged) {
      let waited = false;
      this.quorum.whenWritable((err) => {
        // Held, then let through because the peer is back: by now the client may have given up
        // on this request and written the same blocks through the other node; applying it
        // late could overwrite that newer data on both. It fails instead (never acknowledged).
        if (!err && waited && this.peer.connected) err = Object.assign(new Error('held without quorum until the peer came back; not applied'), { code: 'EIO' });
        alError = err;
        turn.ready = true;
        this.sendReady();
      });
      waited = !turn.ready;
      return;
    }
    al.begin(offset, length, (err) => {
      alError = err;
      turn.ready = true;
      this.sendReady();
    });
  }

  /** Sends the changes whose activity-log extents are durable, in the order they started. */
  private sendReady(): void {
    while (this.outgoing[0]?.ready) this.outgoing.shift()!.go();
  }

  /** The peer is gone: the bits must be durable before the change is made and acknowledged. */
  private changeDegraded(entry: InFlight, piece: Piece, done: Done): void {
    this.startTracking();
    const [first, count] = this.grains(entry.offset, entry.end - entry.offset);
    this.meta.markDirty(first, count, (err) => {
      if (err) {
        this.untrack(entry);
        return done(err);
      }
      this.applyLocal(entry, piece, (e) => {
        this.untrack(entry);
        done(e);
      });
    });
  }

  /**
   * An Inconsistent copy (a resync to it was cut short) takes no writes without its peer: it
   * would then have changes of its own on top of partial data and could become a resync source.
   */
  private incompleteAlone(): Error | null {
    if (this.meta.state !== DiskState.Inconsistent || this.brandNew()) return null;
    return Object.assign(new Error('this copy is incomplete (its resync was cut short): it takes writes only with its peer connected'), { code: 'EIO' });
  }

  /** First write without the peer: new current generation, the bitmap counts from the old one. */
  private startTracking(): void {
    const g = this.meta.generation;
    const next = startTracking(g);
    if (next === g) return;
    // A brand-new node writing alone holds the only copy of its data: up to date by definition.
    this.meta.saveIdentity({ generation: next, trackingSince: Date.now(), ...(this.brandNew() ? { state: DiskState.UpToDate } : {}) });
  }

  /** Never synced with anything and never written alone (a fresh volume). */
  private brandNew(): boolean {
    const g = this.meta.generation;
    return this.meta.state === DiskState.Inconsistent && g.bitmap === NO_GENERATION && g.history[0] === NO_GENERATION;
  }

  flush(done: Done): void {
    if (!this.peer.connected) return this.local.flush(done);
    const id = this.nextId++;
    let pending = 2;
    let error: Error | null = null;
    const one = (err: Error | null) => {
      error ??= err;
      if (--pending === 0) done(error);
    };
    this.flushes.set(id, one);
    this.sentToPeer(id);
    this.peer.send(PeerMsg.FLUSH, id);
    this.local.flush(one);
  }

  cache(offset: number, length: number, done: Done): void {
    this.local.cache(offset, length, done);
  }

  /**
   * Allocation status, which clients use to skip reading holes: it must not describe old data
   * either. A node the witness declared outdated holds it like a read; a resync target reports
   * the whole range as data (always allowed), so the client's reads come through `read`, which
   * fetches the ranges not copied yet from the source, instead of trusting local holes.
   */
  extents(offset: number, length: number, max: number, done: (err: Error | null, extents: Extent[]) => void): void {
    if (!this.quorum.readable) return this.quorum.whenReadable((err) => (err ? done(err, []) : this.extents(offset, length, max, done)));
    if (this.stale) return done(null, [{ length, flags: 0 }]);
    this.local.extents(offset, length, max, done);
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
    // Every frame is checked against the receiver's table (peer-frames.ts) before a handler
    // runs: a frame it refuses throws (the link drops) having changed no data and no bit.
    // Data frames keep their body until it is on disk: everything that may throw (the check,
    // parsing) happens before their I/O starts, and a throw there gives the body back. The
    // other frames are done with their body when their handler returns.
    if (h.type === PeerMsg.WRITE || h.type === PeerMsg.RS_DATA || h.type === PeerMsg.RS_DIFF) {
      let resyncData: ResyncData | undefined;
      try {
        this.checkFrame(h, body);
        if (h.type !== PeerMsg.WRITE) resyncData = this.parseResyncData(h.type, h.id, body);
      } catch (err) {
        this.peer.release(body);
        throw err;
      }
      if (h.type === PeerMsg.WRITE) return this.onPeerWrite(h.id, body);
      if (!resyncData) return this.peer.release(body); // an answer to a request given up on
      return this.onResyncData(h.id, resyncData, body);
    }
    try {
      this.checkFrame(h, body);
      this.handleControlFrame(h, body);
    } finally {
      this.peer.release(body);
    }
  }

  private checkFrame(h: FrameHeader, body: Buffer): void {
    const r = this.resyncState;
    checkVolumeFrame(h, body, { index: this.volumeIndex, size: this.size, blockSize: this.grain, phase: { resync: r?.role, peerRunsIn: r?.peerRunsIn ?? false } });
  }

  private handleControlFrame(h: FrameHeader, body: Buffer): void {
    switch (h.type) {
      case PeerMsg.WRITE_ACK: {
        const w = this.localWrites.get(h.id);
        if (!w) return;
        const st = body.length >= 4 ? body.readUInt32BE(0) : 0;
        if (st === STATUS_RESEND) return this.resend(w);
        this.awaitingPeer.delete(h.id);
        if (st === 0) {
          w.peerDone = true;
          return this.maybeFinish(w);
        }
        // The peer could not write it: the copies may differ there. Marked out of sync (durably)
        // before the client hears of the failure, so the next resync or verify repairs it.
        const [first, count] = this.grains(w.entry.offset, w.entry.end - w.entry.offset);
        w.peerFailed = true;
        return this.meta.markDirty(first, count, () => {
          w.peerDone = true;
          w.error ??= new Error(`peer failed the write with error ${st}`);
          this.maybeFinish(w);
        });
      }
      case PeerMsg.FLUSH:
        return this.local.flush(this.peerTask('FLUSH', (err) => void this.peer.send(PeerMsg.FLUSH_ACK, h.id, status(err))));
      case PeerMsg.BITMAP_RUNS:
        return this.onPeerRuns(h.flags, body);
      case PeerMsg.RS_REQUEST:
        return this.onResyncRequest(h.id, body);
      case PeerMsg.RS_CSUM_REQUEST:
        return this.onChecksumRequest(h.id, body);
      case PeerMsg.VERIFY_REQUEST:
        return this.onVerifyRequest(h.id, body);
      case PeerMsg.VERIFY_DIGESTS:
        return this.verifyRun?.onDigests(h.id, this.compare.decodeDigests(body).digests);
      case PeerMsg.RESYNC_NOW:
        return this.onResyncAsked?.(body.readUInt32BE(0) === 1 ? 'source' : 'target');
      case PeerMsg.RS_ACK: {
        const r = decodeRange(body);
        const [first, count] = this.grains(r.offset, r.length);
        this.meta.clearDirty(first, count);
        if (this.resyncState) this.resyncState.doneBytes += r.length;
        this.resyncedBytesTotal += r.length;
        return;
      }
      case PeerMsg.TRIM:
      case PeerMsg.ZERO: {
        const r = decodeRange(body);
        const flags = body.readUInt32BE(RANGE_SIZE);
        return this.onPeerChange(h.id, r.offset, r.length, h.type === PeerMsg.TRIM ? this.trimmer((flags & 1) !== 0) : this.zeroer(flags));
      }
      case PeerMsg.PEER_READ:
        return this.onPeerRead(h.id, body);
      case PeerMsg.PEER_READ_DATA:
        return this.onPeerReadData(h.id, body);
      case PeerMsg.RS_DONE: {
        const r = this.resyncState;
        this.resyncState = undefined;
        if (r) this.meta.flushBitmap(r.onDone);
        return;
      }
      case PeerMsg.FLUSH_ACK: {
        const f = this.flushes.get(h.id);
        this.flushes.delete(h.id);
        this.awaitingPeer.delete(h.id);
        return f?.(body.length >= 4 && body.readUInt32BE(0) !== 0 ? new Error('peer flush failed') : null);
      }
    }
  }

  /**
   * The link is gone: every write still waiting for the peer becomes a degraded write (its bits
   * are made durable, then it completes); flushes waiting for the peer complete locally.
   * (Peer writes being applied here finish on their own; their ACK has nowhere to go, and the
   * peer marks them dirty on its side.)
   */
  peerLost(): void {
    this.awaitingPeer.clear(); // what waited for answers is settled below
    // Damaged peer writes will not be sent again: the peer marks them dirty on its side.
    for (const e of this.damagedWrites.values()) this.release(e);
    this.damagedWrites.clear();
    this.rerequests.clear();
    for (const w of [...this.localWrites.values()]) {
      if (w.peerDone || w.peerFailed) continue;
      const [first, count] = this.grains(w.entry.offset, w.entry.end - w.entry.offset);
      this.meta.markDirty(first, count, (err) => {
        // Acknowledged only with quorum: the peer may hold the grant and never get this write.
        // Only then has this node written alone (a new generation); a write failed for want of
        // quorum leaves the generation alone, so the resync from the holder covers its bits.
        this.quorum.whenWritable((qErr) => {
          // Let through because the peer is back, not because this node may write alone: the
          // write never reached the peer, and the resync just decided may copy the peer's data
          // over its bits. It fails (EIO), so no client counts on it; never acknowledged.
          if (!qErr && this.peer.connected) qErr = Object.assign(new Error('the peer came back before this write could be acknowledged alone'), { code: 'EIO' });
          qErr ??= this.incompleteAlone();
          if (!qErr) this.startTracking();
          w.error ??= err ?? qErr;
          w.peerDone = true;
          this.maybeFinish(w);
        });
      });
    }
    for (const [id, f] of this.flushes) {
      this.flushes.delete(id);
      this.local.flush(f);
    }
    // Resync requests that will never be answered: release what waits on them; bits stay set.
    for (const e of [...this.inFlight]) {
      if (e.origin !== 'resync' || e.onDisk) continue;
      this.untrack(e);
      e.onDisk = true;
      for (const w of e.whenOnDisk.splice(0)) w();
    }
    const r = this.resyncState;
    this.resyncState = undefined;
    for (const [id, p] of this.peerReads) {
      this.peerReads.delete(id);
      p.done(Object.assign(new Error('this range is not resynced yet and the peer is gone'), { code: 'EIO' }));
    }
    // Reads that waited for the runs are decided again (now without a peer).
    for (const waiting of this.readsWaitingForRuns.splice(0)) waiting();
    this.rate.cancel();
    r?.onDone(new Error('peer link lost during resync'));
    this.verifyRun?.abort('peer link lost during verify');
  }

  /** Progress of a running resync, if any. */
  get resync(): ResyncProgress | undefined {
    const r = this.resyncState;
    return r && { role: r.role, checksum: r.checksum, totalBytes: r.totalBytes, doneBytes: r.doneBytes };
  }

  /**
   * Starts a resync in the given role (decided by generation ids); `done` runs when all dirty
   * ranges are copied and both bitmaps are clear and durable.
   */
  startResync(role: 'source' | 'target', done: Done, checksum = false): void {
    if (!this.peer.connected) return done(new Error('cannot resync without the peer'));
    this.resyncState = { role, checksum, totalBytes: 0, doneBytes: 0, peerRunsIn: false, cursor: 0, requests: 0, onDone: done, unsynced: [], unsyncedBytes: 0, syncing: false, afterSync: [], finishing: false };
    if (role === 'target') {
      this.stale = true;
      this.unionKnown = false;
    }
    this.sendRuns(this.meta.bitmap.runs(0, Infinity), true);
  }

  /** Sends dirty runs (grain units) for the peer to mark too; `last` ends a resync's exchange. */
  private sendRuns(runs: ReadonlyArray<{ start: number; length: number }>, last: boolean): void {
    for (let i = 0; i < runs.length || i === 0; i += 4096) {
      const part = runs.slice(i, i + 4096);
      const body = Buffer.alloc(4 + 16 * part.length);
      body.writeUInt32BE(this.volumeIndex, 0);
      part.forEach((r, j) => {
        body.writeDoubleBE(r.start, 4 + 16 * j);
        body.writeDoubleBE(r.length, 12 + 16 * j);
      });
      this.peer.send(PeerMsg.BITMAP_RUNS, this.nextId++, body, last && i + 4096 >= runs.length ? 1 : 0);
    }
  }

  /**
   * Online verify (see verify.ts): compares every block with the peer while clients work. The
   * differing ranges are marked out of sync on both nodes (not repaired: see askResync).
   */
  verify(done: (err: Error | null, report: VerifyReport | undefined) => void): void {
    if (!this.peer.connected) return done(new Error('cannot verify without the peer'), undefined);
    if (this.resyncState) return done(new Error('a resync is running; verify after it'), undefined);
    if (this.verifyRun) return done(new Error('a verify of this volume is already running'), undefined);
    const run = new VerifyRun(
      {
        size: this.size,
        blockSize: this.grain,
        comparer: this.compare,
        rate: this.rate,
        requestDigests: (id, offset, length) => this.peer.send(PeerMsg.VERIFY_REQUEST, id, encodeRange(this.volumeIndex, offset, length)),
        inFlight: (offset, end) => this.inFlight.filter((e) => e.origin !== 'resync' && e.end > offset && e.offset < end).map((e): [number, number] => [e.offset, e.end]),
        readLocal: (offset, length, cb) => {
          const data = this.hot.slots.acquire(length);
          this.local.read(data, offset, this.peerTask('VERIFY_DIGESTS', (err) => cb(err, data)));
        },
        releaseLocal: (data) => this.hot.slots.release(data),
        nextId: () => this.nextId++,
      },
      (err, report) => {
        this.verifyRun = undefined;
        const grains = report.ranges.map((r) => {
          const [start, length] = this.grains(r.offset, r.length);
          return { start, length };
        });
        if (grains.length === 0) return done(err, report);
        // Out of sync on both nodes: marked durably here, and the peer marks them too.
        if (this.peer.connected) this.sendRuns(grains, false);
        let left = grains.length;
        for (const g of grains) this.meta.markDirty(g.start, g.length, () => --left === 0 && done(err, report));
      },
    );
    this.verifyRun = run;
    run.start();
  }

  /** Progress of a running verify, if any. */
  get verifying(): VerifyReport | undefined {
    return this.verifyRun?.report;
  }

  /** Asks the peer to start a resync now with this node in `role` (the caller starts its own side). */
  askResync(role: 'source' | 'target'): boolean {
    const body = Buffer.alloc(4);
    body.writeUInt32BE(role === 'source' ? 0 : 1); // the peer's role is the other one
    return this.peer.send(PeerMsg.RESYNC_NOW, this.nextId++, body);
  }

  /** Peer verifying: our digests of a range, once earlier writes to it are on disk; later ones wait. */
  private onVerifyRequest(id: bigint, body: Buffer): void {
    const range = decodeRange(body);
    const entry = this.track(range.offset, range.length, 'resync', id);
    this.afterEarlier(
      entry,
      this.peerTask('VERIFY_REQUEST', () => {
        const data = this.hot.slots.acquire(range.length);
        this.local.read(
          data,
          range.offset,
          this.peerTask('VERIFY_REQUEST', (err) => {
            try {
              this.release(entry);
              if (!err) this.peer.send(PeerMsg.VERIFY_DIGESTS, id, this.compare.digestRequest(this.volumeIndex, range.offset, data));
            } finally {
              this.hot.slots.release(data);
            }
          }),
        );
      }),
    );
  }

  private onPeerRuns(flags: number, body: Buffer): void {
    for (let at = 4; at + 16 <= body.length; at += 16) {
      this.meta.markDirty(body.readDoubleBE(at), body.readDoubleBE(at + 8), () => undefined);
    }
    const r = this.resyncState;
    if (!r || (flags & 1) === 0) return;
    r.peerRunsIn = true;
    this.unionKnown = true;
    // Both sides now hold the union of the dirty bits.
    r.totalBytes = this.meta.bitmap.count() * this.grain;
    for (const waiting of this.readsWaitingForRuns.splice(0)) waiting();
    if (r.role === 'target') this.pullMore();
  }

  /** Target: keeps up to RESYNC_WINDOW requests in flight, walking the dirty runs in order. */
  private pullMore(): void {
    const r = this.resyncState;
    if (!r) return;
    const bits = this.meta.bitmap.bits;
    while (r.requests < RESYNC_WINDOW && r.cursor < bits) {
      const [run] = this.meta.bitmap.runs(r.cursor, 1);
      if (!run) {
        r.cursor = bits;
        break;
      }
      const grains = Math.min(run.length, (this.rate.busy ? RESYNC_CHUNK_BUSY : RESYNC_CHUNK) / this.grain);
      r.cursor = run.start + grains;
      const offset = run.start * this.grain;
      const length = Math.min(grains * this.grain, this.size - offset);
      r.requests++;
      // Paced (resync.maxRate, and slower while clients are busy). The range is tracked only
      // when its request leaves, so client writes to it are not held while it waits its turn.
      this.rate.take(length, () => {
        if (this.resyncState !== r) return;
        const entry = this.track(offset, length, 'resync', this.nextId++);
        if (r.checksum) this.requestByChecksum(entry);
        else this.peer.send(PeerMsg.RS_REQUEST, entry.id, encodeRange(this.volumeIndex, offset, length));
      });
    }
    if (r.requests === 0 && r.cursor >= bits && !r.finishing) {
      r.finishing = true;
      this.checkpoint(r, () => this.finishResync());
    }
  }

  /**
   * Target: makes the resync data written so far durable (the volume's flush), and only then
   * clears its bits and acknowledges the ranges to the source, which clears its own. Until then
   * both nodes keep the bits, so a power loss here cannot leave a range counted as in sync whose
   * data never reached this disk; a resync cut short resumes from the last checkpoint.
   */
  private checkpoint(r: ResyncRun, then?: () => void): void {
    if (r.syncing) return void r.afterSync.push(() => this.checkpoint(r, then));
    const batch = r.unsynced.splice(0);
    r.unsyncedBytes = 0;
    r.syncing = true;
    this.local.flush((err) => {
      r.syncing = false;
      if (this.resyncState !== r) return; // cut short: the bits stay set on both nodes
      if (err) {
        this.resyncState = undefined;
        return r.onDone(err);
      }
      for (const b of batch) {
        const [first, count] = this.grains(b.offset, b.length);
        this.meta.clearDirty(first, count);
        this.peer.send(PeerMsg.RS_ACK, b.id, encodeRange(this.volumeIndex, b.offset, b.length));
      }
      this.meta.flushBitmap(() => undefined);
      for (const next of r.afterSync.splice(0)) next();
      then?.();
    });
  }

  /**
   * Target, checksum resync: digest what we hold of the range (once earlier writes to it are on
   * disk; later ones wait for the entry) and send the digests instead of asking for the data.
   */
  private requestByChecksum(entry: InFlight): void {
    const length = entry.end - entry.offset;
    this.afterEarlier(
      entry,
      this.peerTask('RS_CSUM_REQUEST', () => {
        const data = this.hot.slots.acquire(length);
        this.local.read(
          data,
          entry.offset,
          this.peerTask('RS_CSUM_REQUEST', (err) => {
            let body: Buffer[];
            try {
              // Unreadable here: ask for the whole range instead.
              if (err) return void this.peer.send(PeerMsg.RS_REQUEST, entry.id, encodeRange(this.volumeIndex, entry.offset, length));
              body = this.compare.digestRequest(this.volumeIndex, entry.offset, data);
            } finally {
              this.hot.slots.release(data);
            }
            this.peer.send(PeerMsg.RS_CSUM_REQUEST, entry.id, body);
          }),
        );
      }),
    );
  }

  /** Source, checksum resync: compare with the target's digests, send only the blocks that differ. */
  private onChecksumRequest(id: bigint, body: Buffer): void {
    const req = this.compare.decodeDigests(body);
    const theirs = Buffer.from(req.digests); // the body is given back when this returns
    const entry = this.track(req.offset, req.length, 'resync', id);
    this.afterEarlier(
      entry,
      this.peerTask('RS_CSUM_REQUEST', () => {
        const data = Buffer.allocUnsafe(req.length);
        this.local.read(
          data,
          req.offset,
          this.peerTask('RS_CSUM_REQUEST', (err) => {
            try {
              if (err) return;
              const parts = this.compare.diffBody(this.volumeIndex, req.offset, data, this.compare.differing(data, theirs));
              for (let i = 1; i < parts.length; i++) this.resyncWireBytesTotal += parts[i]!.length;
              this.peer.send(PeerMsg.RS_DIFF, id, parts);
            } finally {
              this.release(entry);
            }
          }),
        );
      }),
    );
  }

  /** Source: answer once every earlier write to the range is on disk. */
  private onResyncRequest(id: bigint, body: Buffer): void {
    const range = decodeRange(body);
    const entry = this.track(range.offset, range.length, 'resync', id);
    this.afterEarlier(
      entry,
      this.peerTask('RS_REQUEST', () => {
        const data = Buffer.allocUnsafe(range.length);
        this.local.read(
          data,
          range.offset,
          this.peerTask('RS_REQUEST', (err) => {
            try {
              if (err) return;
              const head = encodeRange(this.volumeIndex, range.offset, range.length);
              this.resyncWireBytesTotal += data.length;
              this.peer.send(PeerMsg.RS_DATA, id, [head, encodeDigest(sealDigest(this.hot.digestOf(data), range.offset)), data]);
            } finally {
              this.release(entry);
            }
          }),
        );
      }),
    );
  }

  /**
   * Target: the resync data of a request — the whole range (RS_DATA) or the blocks that
   * differed (RS_DIFF) — parsed and matched with the request it answers; undefined for a
   * request no longer open. Throws on a malformed RS_DIFF (nothing written yet).
   */
  private parseResyncData(type: PeerMsg, id: bigint, body: Buffer): ResyncData | undefined {
    const entry = this.inFlight.find((e) => e.id === id && e.origin === 'resync');
    const r = this.resyncState;
    if (!entry || !r) return undefined;
    const range = decodeRange(body);
    // Data for another range than was asked for is never written: treated as damaged (asked
    // for again, and the link reset if it keeps coming), as its sealed digest would be.
    const matches = range.offset === entry.offset && range.length === entry.end - entry.offset;
    if (type === PeerMsg.RS_DIFF) {
      const { pieces, intact } = this.compare.decodeDiff(body);
      return { entry, r, range, pieces, intact, matches, diff: true };
    }
    const data = body.subarray(RS_DATA_HEADER_SIZE);
    return { entry, r, range, pieces: [{ offset: range.offset, data }], intact: true, matches, diff: false, digest: readDigest(body, RANGE_SIZE) };
  }

  /** Target: write the resync data (later writes to the range wait for it), then account for it (see checkpoint). */
  private onResyncData(id: bigint, d: ResyncData, body: Buffer): void {
    const { entry, r, range, pieces } = d;
    let intact: boolean;
    if (d.diff || !d.matches) {
      intact = d.intact && d.matches;
      if (!intact) this.countDamage(id, entry.offset, entry.end - entry.offset);
    } else {
      intact = this.intact(id, pieces[0]!.data, range.offset, 0, d.digest!);
    }
    if (!intact) {
      this.peer.release(body);
      this.pullAgain(entry, r);
      return;
    }
    if (this.rerequests.size > 0) this.rerequests.delete(id);
    let left = pieces.length;
    let error: Error | null = null;
    const written = (err: Error | null): void => {
      error ??= err;
      if (--left > 0) return;
      this.peer.release(body);
      if (!error) {
        r.doneBytes += range.length;
        this.resyncedBytesTotal += range.length;
        for (const p of pieces) this.resyncWireBytesTotal += p.data.length;
        r.unsynced.push({ id, offset: range.offset, length: range.length });
        r.unsyncedBytes += range.length;
      }
      this.release(entry);
      r.requests--;
      if (error) {
        this.resyncState = undefined;
        return r.onDone(error);
      }
      // Every 64 MiB the copied data is made durable and its bits cleared (see checkpoint).
      if (r.unsyncedBytes >= RESYNC_CHECKPOINT) this.checkpoint(r);
      this.pullMore();
    };
    if (left === 0) return void (left = 1, written(null));
    const writtenSafely = this.peerTask('RS_DATA', written);
    for (const p of pieces) this.local.write(p.data, p.offset, false, writtenSafely);
  }

  /** Target: resync data arrived damaged; ask for it again the way it was asked for. */
  private pullAgain(entry: InFlight, r: ResyncRun): void {
    if (!this.peer.connected) return;
    if (r.checksum) this.requestByChecksum(entry);
    else this.peer.send(PeerMsg.RS_REQUEST, entry.id, encodeRange(this.volumeIndex, entry.offset, entry.end - entry.offset));
  }

  private finishResync(): void {
    const r = this.resyncState!;
    this.resyncState = undefined;
    this.stale = false;
    // The source cleared its bits on each RS_ACK, all sent before this.
    this.peer.send(PeerMsg.RS_DONE, this.nextId++, encodeRange(this.volumeIndex, 0, 0));
    this.meta.flushBitmap(r.onDone);
  }

  /**
   * Wraps a continuation of a peer frame's handling (an I/O callback, a wait for earlier
   * writes): an exception in it — peer input no check caught, or a bug — resets the link
   * instead of escaping into an fs callback, where it would end the process.
   */
  private peerTask<A extends unknown[]>(frame: string, fn: (...args: A) => void): (...args: A) => void {
    return (...args) => {
      try {
        fn(...args);
      } catch (err) {
        this.log.error({ err, frame }, 'error handling a peer frame; resetting the link');
        this.peer.reset(`error handling a peer ${frame}: ${(err as Error).message}`);
      }
    };
  }

  /** Marks a tracked entry done and lets what waits on it go. */
  private release(entry: InFlight): void {
    this.untrack(entry);
    entry.onDisk = true;
    for (const w of entry.whenOnDisk.splice(0)) w();
  }

  private onPeerWrite(id: bigint, body: Buffer): void {
    const w = decodeWriteHeader(body);
    const data = body.subarray(WRITE_HEADER_SIZE);
    let placeholder = this.damagedWrites.get(id);
    if (!this.intact(id, data, w.offset, w.flags, w.digest)) {
      this.peer.release(body);
      if (!this.peer.connected) return; // the link was reset: the peer marks this write dirty
      // Hold its place among overlapping writes until the good copy comes.
      if (!placeholder) this.damagedWrites.set(id, this.track(w.offset, data.length, 'peer', id));
      this.peer.send(PeerMsg.WRITE_ACK, id, statusCode(STATUS_RESEND));
      return;
    }
    this.damagedWrites.delete(id);
    if (placeholder && (placeholder.offset !== w.offset || placeholder.end !== w.offset + data.length)) {
      // The damage was in the range itself: the placeholder guarded the wrong bytes.
      this.release(placeholder);
      placeholder = undefined;
    }
    const entry = placeholder ?? this.track(w.offset, data.length, 'peer', id);
    this.applyPeerChange(entry, this.writer(data, w.offset, (w.flags & 1) !== 0), () => this.peer.release(body));
  }

  private onPeerChange(id: bigint, offset: number, length: number, piece: Piece): void {
    this.applyPeerChange(this.track(offset, length, 'peer', id), piece);
  }

  private applyPeerChange(entry: InFlight, piece: Piece, applied?: () => void): void {
    // A client's write on the peer is client I/O here too: a resync this node pulls yields to it.
    this.rate.clientIo();
    this.applyLocal(
      entry,
      piece,
      this.peerTask('WRITE', (err) => {
        applied?.();
        this.untrack(entry);
        this.peer.send(PeerMsg.WRITE_ACK, entry.id, status(err));
      }),
    );
  }

  /**
   * Checks a data frame's digest. A failure is logged and counted, and the caller asks for the
   * frame again; after MAX_RESENDS failures of one frame the link is reset.
   */
  private intact(id: bigint, data: Buffer, offset: number, flags: number, digest: bigint): boolean {
    if (sealDigest(this.hot.digestOf(data), offset, flags) === digest) {
      if (this.rerequests.size > 0) this.rerequests.delete(id);
      return true;
    }
    this.countDamage(id, offset, data.length);
    return false;
  }

  private countDamage(id: bigint, offset: number, length: number): void {
    this.integrityErrors++;
    const tries = (this.rerequests.get(id) ?? 0) + 1;
    this.rerequests.set(id, tries);
    this.log.warn({ offset, length, tries, integrityErrors: this.integrityErrors }, 'data from the peer failed its digest check; asking for it again');
    if (tries >= MAX_RESENDS) {
      this.log.error({ offset, tries }, 'data from the peer keeps failing its digest check; resetting the link');
      this.peer.reset(`a data frame failed its digest check ${tries} times`);
    }
  }

  /** The peer asks for a WRITE again (it arrived damaged). */
  /** Request `id` went to the peer: it must answer within the ack timeout. */
  private sentToPeer(id: bigint): void {
    this.awaitingPeer.set(id, Date.now());
    this.ackWatch ??= setTimeout(this.checkAcks, this.ackTimeoutMs / 4).unref();
  }

  /** Runs while requests wait for the peer: the oldest unanswered past the timeout resets the link. */
  private readonly checkAcks = (): void => {
    this.ackWatch = undefined;
    const oldest = this.awaitingPeer.values().next();
    if (oldest.done) return;
    const waited = Date.now() - oldest.value;
    if (waited <= this.ackTimeoutMs) {
      this.ackWatch = setTimeout(this.checkAcks, this.ackTimeoutMs / 4).unref();
      return;
    }
    this.log.warn({ waitedMs: waited, ackTimeoutMs: this.ackTimeoutMs, unanswered: this.awaitingPeer.size }, 'the peer answers heartbeats but not writes: resetting the link');
    this.peer.reset(`no answer to a write or flush for ${waited} ms (ack timeout ${this.ackTimeoutMs} ms)`);
  };

  private resend(w: LocalWrite): void {
    this.peer.send(w.type, w.entry.id, w.frame);
  }

  private maybeFinish(w: LocalWrite): void {
    if (!w.diskDone || !w.peerDone) return;
    this.localWrites.delete(w.entry.id);
    this.untrack(w.entry);
    this.meta.activityLog.end(w.entry.offset, w.entry.end - w.entry.offset);
    w.done(w.error);
  }

  private track(offset: number, length: number, origin: InFlight['origin'], id: bigint): InFlight {
    const entry: InFlight = { id, offset, end: offset + length, origin, onDisk: false, whenOnDisk: [] };
    if (origin !== 'resync') this.verifyRun?.touch(offset, offset + length);
    this.inFlight.push(entry);
    return entry;
  }

  private untrack(entry: InFlight): void {
    const i = this.inFlight.indexOf(entry);
    if (i >= 0) this.inFlight.splice(i, 1);
  }

  /**
   * Runs `fn` once every earlier overlapping entry `entry` must follow is on disk; `fn` gets the
   * concurrent writes whose bytes `entry` must leave alone (see the file comment).
   */
  private afterEarlier(entry: InFlight, fn: (skip: InFlight[]) => void): void {
    const mustFollow: InFlight[] = [];
    const skip: InFlight[] = [];
    for (const other of this.inFlight) {
      if (other === entry) break; // only entries that started before this one
      if (other.end <= entry.offset || other.offset >= entry.end) continue;
      if (other.origin === entry.origin || other.origin === 'resync' || entry.origin === 'resync' || this.landsLast(entry)) mustFollow.push(other);
      else skip.push(other);
    }
    const waiting = mustFollow.filter((o) => !o.onDisk);
    let left = waiting.length;
    if (left === 0) return fn(skip);
    for (const o of waiting) o.whenOnDisk.push(() => --left === 0 && fn(skip));
  }

  /** Applies `entry`'s change, piece by piece, in its place in the order of overlapping writes. */
  private applyLocal(entry: InFlight, piece: Piece, done: Done): void {
    this.afterEarlier(entry, (skip) => {
      const pieces = subtract(entry.offset, entry.end, skip);
      let left = pieces.length;
      let error: Error | null = null;
      const finished = (): void => {
        entry.onDisk = true;
        for (const w of entry.whenOnDisk.splice(0)) w();
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

  /** Does `entry` win overlaps with concurrent writes of the other origin? */
  private landsLast(entry: InFlight): boolean {
    return entry.origin === 'local' ? this.winsOverlaps : !this.winsOverlaps;
  }

  private grains(offset: number, length: number): [number, number] {
    const first = Math.floor(offset / this.grain);
    return [first, Math.ceil((offset + length) / this.grain) - first];
  }
}

function status(err: Error | null): Buffer {
  return statusCode(err ? 5 : 0); // EIO
}

function statusCode(code: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(code);
  return b;
}

/** [from, to) minus the ranges of `cut`, as sorted pieces. */
function subtract(from: number, to: number, cut: readonly InFlight[]): Array<[number, number]> {
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
