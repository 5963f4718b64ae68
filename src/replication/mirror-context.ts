// What every part of a mirrored volume shares (the write lifecycle, the receiver, resync source
// and target, verify): the local volume and its metadata, the peer port, the in-flight tracker,
// request ids, the digest check and the counters. One per volume; the parts get it at birth.
import type { Hotpath } from '../hotpath/index.js';
import type { Logger } from '../log.js';
import type { VolumeMeta } from '../meta/volume-meta.js';
import type { Volume } from '../volume/volume.js';
import { BlockComparer } from './block-compare.js';
import { InFlightTracker, type InFlight, type Origin } from './in-flight.js';
import { MAX_RUNS_PER_FRAME } from './peer-frames.js';
import { encodeRuns, PeerMsg, sealDigest } from './peer-protocol.js';
import { RateLimiter } from './rate-limit.js';

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

/** What the mirrored volume asks of the quorum gate (src/replication/quorum.ts). */
export interface QuorumPort {
  readonly writable: boolean;
  readonly readable: boolean;
  whenWritable(cb: (err: Error | null) => void): void;
  whenReadable(cb: (err: Error | null) => void): void;
}

/** A data frame failing its digest this many times in a row resets the link. */
export const MAX_RESENDS = 3;

export interface MirrorContextOptions {
  readonly local: Volume;
  readonly meta: VolumeMeta;
  readonly peer: PeerPort;
  readonly index: number;
  readonly grain: number;
  readonly hot: Hotpath;
  readonly log: Logger;
  readonly rate: RateLimiter;
  readonly quorum: QuorumPort;
  readonly localWinsOverlaps: boolean;
}

export class MirrorContext {
  /** The local copy; a DetachedDisk once it failed (replication-state.ts, Failed). */
  local: Volume;
  readonly meta: VolumeMeta;
  readonly peer: PeerPort;
  /** The peer said its disk failed (DISK_FAILED, or its HELLO): every change is marked out of sync here. */
  peerDiskFailed = false;
  /**
   * This copy lacks [offset, offset + length) (a resync into it has not copied it yet): it must
   * not be served from here. Set by the mirrored volume.
   */
  lacks: (offset: number, length: number) => boolean = () => false;
  /** This copy is incomplete (a resync target, or one cut short): set by the mirrored volume. */
  incomplete: () => boolean = () => false;
  /** Told when the local disk fails a request for [offset, offset + length) (the volume moves to Failed). */
  onDiskFailure: ((err: Error, during: string, offset: number, length: number) => void) | undefined;
  /**
   * Index of the volume on the wire, the same on both nodes: its place in the sorted names at
   * the link's HELLO, or, for a volume created online, the next one then (see renumber).
   */
  index: number;
  /** Grows when the volume is resized online (MirroredVolume.grow). */
  size: number;
  /** Dirty-bitmap grain = digest block size. */
  readonly grain: number;
  readonly hot: Hotpath;
  readonly log: Logger;
  /** Paces resync and verify; told about every client request. */
  readonly rate: RateLimiter;
  readonly quorum: QuorumPort;
  readonly tracker: InFlightTracker;
  readonly compare: BlockComparer;
  /** Told of every tracked client change (a running verify rechecks those ranges). */
  onChange: ((offset: number, end: number) => void) | undefined;
  readonly counters = {
    /** Data frames from the peer that failed their digest check, since start-up. */
    integrityErrors: 0,
    /** Bytes copied by resyncs since start-up (sent as source or written as target). */
    resyncedBytes: 0,
    /** Data bytes resync moved over the link; with checksum resync, less than the ranges covered. */
    resyncWireBytes: 0,
  };
  /** Request ids carry the volume index in their top 16 bits, so replies can be routed. */
  private id: bigint;
  /** Resends asked for per request id (peer WRITE, resync or peer-read answer). */
  private readonly rerequests = new Map<bigint, number>();

  constructor(o: MirrorContextOptions) {
    ({ local: this.local, meta: this.meta, peer: this.peer, index: this.index, grain: this.grain, hot: this.hot, log: this.log, rate: this.rate, quorum: this.quorum } = o);
    this.size = o.local.size;
    this.tracker = new InFlightTracker(o.localWinsOverlaps);
    this.compare = new BlockComparer(o.hot, o.grain);
    this.id = (BigInt(o.index) << 48n) + 1n;
  }

  nextId(): bigint {
    return this.id++;
  }

  /** A new link numbers the volumes afresh (nothing of the old link is in flight any more). */
  renumber(index: number): void {
    this.index = index;
    this.id = (BigInt(index) << 48n) + 1n;
  }

  /** Tracks a change or range request (see in-flight.ts); a client change is told to verify. */
  track(offset: number, length: number, origin: Origin, id: bigint): InFlight {
    if (origin !== 'resync') this.onChange?.(offset, offset + length);
    return this.tracker.track(offset, length, origin, id);
  }

  /** The local disk failed `err` while doing `during` to [offset, offset + length). */
  diskFailed(err: Error, during: string, offset: number, length: number): void {
    this.onDiskFailure?.(err, during, offset, length);
  }

  /** The grains [first, first + count) covering a byte range. */
  grains(offset: number, length: number): [number, number] {
    const first = Math.floor(offset / this.grain);
    return [first, Math.ceil((offset + length) / this.grain) - first];
  }

  /** Sends dirty runs (grain units) for the peer to mark too; `last` ends a resync's exchange. */
  sendRuns(runs: ReadonlyArray<{ start: number; length: number }>, last: boolean): void {
    const bodies = encodeRuns(this.index, runs, MAX_RUNS_PER_FRAME);
    bodies.forEach((body, i) => this.peer.send(PeerMsg.BITMAP_RUNS, this.nextId(), body, last && i === bodies.length - 1 ? 1 : 0));
  }

  /**
   * Wraps a continuation of a peer frame's handling (an I/O callback, a wait for earlier
   * writes): an exception in it — peer input no check caught, or a bug — resets the link
   * instead of escaping into an fs callback, where it would end the process.
   */
  guard<A extends unknown[]>(frame: string, fn: (...args: A) => void): (...args: A) => void {
    return (...args) => {
      try {
        fn(...args);
      } catch (err) {
        this.log.error({ err, frame }, 'error handling a peer frame; resetting the link');
        this.peer.reset(`error handling a peer ${frame}: ${(err as Error).message}`);
      }
    };
  }

  /**
   * Checks a data frame's digest. A failure is logged and counted, and the caller asks for the
   * frame again; after MAX_RESENDS failures of one frame the link is reset.
   */
  intact(id: bigint, data: Buffer, offset: number, flags: number, digest: bigint): boolean {
    if (sealDigest(this.hot.digestOf(data), offset, flags) === digest) {
      this.intactAgain(id);
      return true;
    }
    this.countDamage(id, offset, data.length);
    return false;
  }

  /** A frame that had failed its check arrived intact. */
  intactAgain(id: bigint): void {
    if (this.rerequests.size > 0) this.rerequests.delete(id);
  }

  countDamage(id: bigint, offset: number, length: number): void {
    this.counters.integrityErrors++;
    const tries = (this.rerequests.get(id) ?? 0) + 1;
    this.rerequests.set(id, tries);
    this.log.warn({ offset, length, tries, integrityErrors: this.counters.integrityErrors }, 'data from the peer failed its digest check; asking for it again');
    if (tries >= MAX_RESENDS) {
      this.log.error({ offset, tries }, 'data from the peer keeps failing its digest check; resetting the link');
      this.peer.reset(`a data frame failed its digest check ${tries} times`);
    }
  }

  /** The link is gone: no frame will be sent again. */
  forgetResends(): void {
    this.rerequests.clear();
  }
}
