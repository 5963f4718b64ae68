// Persistent per-volume metadata: a superblock (identity, generation identifiers, disk state),
// the dirty bitmap and the activity log, in one file beside the volume (NAME.meta). When the
// peer is gone a write may be acknowledged only once the bits covering it are durable here
// (invariant 1), and a restart must find them again; a restart after a crash turns the
// activity log's extents into dirty bits (invariant 4).
//
// Layout: bytes 0..4095 superblock (big-endian, CRC-32 in the last 4 bytes);
//         from 4096, the bitmap in the format of src/hotpath/bitmap.ts (bit i = byte i>>3, LSB first);
//         then, 4 KiB-aligned, the activity log's two blocks (src/meta/activity-log.ts).
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import type { DirtyBitmap, Hotpath } from '../hotpath/index.js';
import { ActivityLog, AL_BLOCK, readAlRecord } from './activity-log.js';
import { syncDirectoryOf } from '../durable.js';

const MAGIC = Buffer.from('NBMMETA\0', 'latin1');
const FORMAT_VERSION = 1;
const SUPERBLOCK_SIZE = 4096;
/** Bitmap bytes are written back in pages of this size. */
const PAGE = 4096;

export const enum DiskState {
  UpToDate = 0,
  Inconsistent = 1,
  Outdated = 2,
}

/** DRBD-style generation identifiers (64-bit, as 16 hex digits). */
export interface Generation {
  current: string;
  bitmap: string;
  history: [string, string];
}

export interface MetaIdentity {
  readonly cluster: string;
  readonly node: string;
  readonly volumeSize: number;
  readonly grain: number;
}

/** A metadata file that cannot be used, with the reason in words. */
export class MetaError extends Error {
  readonly code = 'NBD_MIRROR_META';
  constructor(message: string) {
    super(message);
    this.name = 'MetaError';
  }
}

const ZERO_GEN = '0000000000000000';

export function newGenerationId(): string {
  return randomBytes(8).toString('hex');
}

/** Superblock flag: the next resync compares block digests first (set after a crash). */
const FLAG_CHECKSUM_RESYNC = 1;
/**
 * Set while a process has the volume open, cleared by a clean close: found set at open, the last
 * run died (a crash or a power cut), even with an empty activity log — it may have lost writes
 * from the peer that were never flushed here, so this copy is suspect (checksumResync).
 */
const FLAG_RUNNING = 2;

interface Superblock extends MetaIdentity {
  state: DiskState;
  generation: Generation;
  flags: number;
  /** When this node started writing without its peer (ms since 1970; 0: not tracking). */
  trackingSince: number;
}

export interface ActivityLogConfig {
  readonly extentBytes: number;
  readonly slots: number;
  /** The data volume's flush, before an extent leaves the log (see ActivityLogOptions.flushData). */
  readonly flushData?: (done: (err: Error | null) => void) => void;
}

/**
 * Default activity log: 1000 extents of 4 MiB (4 GiB of the volume "hot" at once, like DRBD's
 * default of 1237). With 64 the log cost 47 % of 4k random-write IOPS over a 1 GiB region
 * (docs/BENCHMARKS.md); a crash resync compares at most this much by checksum.
 */
export const DEFAULT_ACTIVITY_LOG: ActivityLogConfig = { extentBytes: 4 << 20, slots: 1000 };

function encodeSuperblock(s: Superblock): Buffer {
  const b = Buffer.alloc(SUPERBLOCK_SIZE);
  MAGIC.copy(b, 0);
  b.writeUInt32BE(FORMAT_VERSION, 8);
  b.writeUInt32BE(s.grain, 12);
  b.writeBigUInt64BE(BigInt(s.volumeSize), 16);
  b.writeUInt32BE(s.state, 24);
  b.writeUInt32BE(s.flags, 28);
  const g = [s.generation.current, s.generation.bitmap, ...s.generation.history];
  g.forEach((hex, i) => Buffer.from(hex, 'hex').copy(b, 32 + 8 * i));
  writeString(b, 64, s.cluster, 256);
  writeString(b, 324, s.node, 64);
  b.writeBigUInt64BE(BigInt(s.trackingSince), 400);
  b.writeUInt32BE(zlib.crc32(b.subarray(0, SUPERBLOCK_SIZE - 4)), SUPERBLOCK_SIZE - 4);
  return b;
}

function decodeSuperblock(b: Buffer, path: string): Superblock {
  if (b.length < SUPERBLOCK_SIZE || !b.subarray(0, 8).equals(MAGIC)) throw new MetaError(`${path} is not an nbd-mirror metadata file`);
  if (b.readUInt32BE(SUPERBLOCK_SIZE - 4) !== zlib.crc32(b.subarray(0, SUPERBLOCK_SIZE - 4))) {
    throw new MetaError(`${path}: superblock checksum mismatch (torn write or corruption)`);
  }
  const version = b.readUInt32BE(8);
  if (version !== FORMAT_VERSION) throw new MetaError(`${path}: metadata format ${version}, this build reads ${FORMAT_VERSION}`);
  const hex = (i: number) => b.subarray(32 + 8 * i, 40 + 8 * i).toString('hex');
  return {
    grain: b.readUInt32BE(12),
    volumeSize: Number(b.readBigUInt64BE(16)),
    state: b.readUInt32BE(24) as DiskState,
    flags: b.readUInt32BE(28),
    generation: { current: hex(0), bitmap: hex(1), history: [hex(2), hex(3)] },
    cluster: readString(b, 64),
    node: readString(b, 324),
    trackingSince: Number(b.readBigUInt64BE(400)),
  };
}

function writeString(b: Buffer, at: number, s: string, max: number): void {
  const bytes = Buffer.from(s, 'utf8');
  if (bytes.length > max) throw new MetaError(`"${s}" is longer than ${max} bytes`);
  b.writeUInt16BE(bytes.length, at);
  bytes.copy(b, at + 2);
}

function readString(b: Buffer, at: number): string {
  return b.toString('utf8', at + 2, at + 2 + b.readUInt16BE(at));
}

export class VolumeMeta {
  private waiting: Array<(err: Error | null) => void> = [];
  private dirtyPages = new Set<number>();
  private flushing = false;
  /** fdatasync calls made for the bitmap (one per batch of markDirty calls). */
  bitmapSyncs = 0;

  /** Replaced when the volume grows online (growOpen). */
  activityLog: ActivityLog;
  /** Activity-log extents found at open (the previous run did not stop cleanly), now dirty bits. */
  readonly recoveredExtents: number;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private sb: Superblock,
    /** Replaced by a larger one when the volume grows online (growOpen). */
    public bitmap: DirtyBitmap,
    private readonly al: ActivityLogConfig,
  ) {
    const alAt = SUPERBLOCK_SIZE + Math.ceil(bitmap.byteLength / AL_BLOCK) * AL_BLOCK;
    const found = readAlRecord(fd, alAt);
    this.activityLog = new ActivityLog({ fd, at: alAt, extentBytes: al.extentBytes, slots: al.slots, sequence: found?.sequence ?? 0n, flushData: al.flushData });
    this.recoveredExtents = found?.extents.length ?? 0;
    this.stoppedUncleanly = (sb.flags & FLAG_RUNNING) !== 0;
    if (found && found.extents.length > 0) this.recover(found.extentBytes, found.extents);
    else if (this.stoppedUncleanly) this.sb.flags |= FLAG_CHECKSUM_RESYNC;
    // One superblock write: the running mark, and the suspicion of an unclean stop with it.
    this.sb.flags |= FLAG_RUNNING;
    this.saveIdentity({});
  }

  /** The previous run did not close the volume cleanly (crash, kill -9, power cut). */
  readonly stoppedUncleanly: boolean;

  /**
   * The last run ended with writes possibly on one node only, somewhere in these extents: mark
   * them dirty (durably), ask for a checksum resync, then empty the log. Each step is durable
   * before the next, so a crash in between only repeats the recovery.
   */
  private recover(extentBytes: number, extents: readonly number[]): void {
    const grainsPerExtent = extentBytes / this.sb.grain;
    for (const e of extents) {
      const first = e * grainsPerExtent;
      if (first < this.bitmap.bits) this.bitmap.set(first, Math.min(grainsPerExtent, this.bitmap.bits - first));
    }
    const bytes = this.bitmap.bytes();
    fs.writeSync(this.fd, bytes, 0, bytes.length, SUPERBLOCK_SIZE);
    fs.fdatasyncSync(this.fd);
    this.saveIdentity({ checksumResync: true });
    this.activityLog.clear();
  }

  static bitsFor(volumeSize: number, grain: number): number {
    return Math.ceil(volumeSize / grain);
  }

  /**
   * Opens NAME.meta, creating it (state Inconsistent, fresh current generation, empty bitmap)
   * when missing — or, for a volume created online on both nodes at once, with the state and
   * generation both were given (`created`). An existing file must match the identity given; the
   * bitmap comes back as saved.
   */
  static open(path: string, id: MetaIdentity, hot: Hotpath, al: ActivityLogConfig = DEFAULT_ACTIVITY_LOG, created?: { state: DiskState; generation: Generation }): VolumeMeta {
    const bitmap = hot.bitmap(VolumeMeta.bitsFor(id.volumeSize, id.grain));
    try {
      return VolumeMeta.openWith(bitmap, path, id, al, created);
    } catch (err) {
      bitmap.release(); // a node that goes on (a volume created online that failed) gets its memory back
      throw err;
    }
  }

  private static openWith(bitmap: DirtyBitmap, path: string, id: MetaIdentity, al: ActivityLogConfig, created?: { state: DiskState; generation: Generation }): VolumeMeta {
    let fd: number;
    let sb: Superblock;
    try {
      fd = fs.openSync(path, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      fd = fs.openSync(path, 'w+');
      sb = { ...id, state: DiskState.Inconsistent, flags: 0, trackingSince: 0, generation: { current: newGenerationId(), bitmap: ZERO_GEN, history: [ZERO_GEN, ZERO_GEN] }, ...created };
      fs.writeSync(fd, encodeSuperblock(sb), 0, SUPERBLOCK_SIZE, 0);
      fs.ftruncateSync(fd, SUPERBLOCK_SIZE + Math.ceil(bitmap.byteLength / AL_BLOCK) * AL_BLOCK + 2 * AL_BLOCK);
      fs.fsyncSync(fd);
      syncDirectoryOf(path); // a new metadata file must not vanish in a power cut
      return new VolumeMeta(path, fd, sb, bitmap, al);
    }
    const head = Buffer.alloc(SUPERBLOCK_SIZE);
    fs.readSync(fd, head, 0, SUPERBLOCK_SIZE, 0);
    try {
      sb = decodeSuperblock(head, path);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    const differs = (['cluster', 'node', 'volumeSize', 'grain'] as const).filter((k) => sb[k] !== id[k]);
    if (differs.length > 0) {
      fs.closeSync(fd);
      throw new MetaError(`${path} belongs to another volume or node (${differs.map((k) => `${k}: ${sb[k]} here, ${id[k]} expected`).join('; ')})`);
    }
    const saved = Buffer.alloc(bitmap.byteLength);
    fs.readSync(fd, saved, 0, saved.length, SUPERBLOCK_SIZE);
    bitmap.load(saved);
    return new VolumeMeta(path, fd, sb, bitmap, al);
  }

  /**
   * Grows a closed volume's metadata to `volumeSize` (an online resize): the bitmap keeps its
   * bits and gains clear ones for the new range (zeroes on both nodes: in sync), the activity
   * log moves behind the longer bitmap. Only after a clean close (the log is empty). Order, each
   * step durable before the next: the file is cut back to the superblock and the old bitmap
   * (dropping the old log, which the longer bitmap will cover) and extended with zeroes to the
   * new layout; then the superblock says the new size. A crash before that leaves the old size
   * with an empty log, after it the new one; either opens.
   */
  static grow(path: string, id: MetaIdentity, volumeSize: number): void {
    const fd = fs.openSync(path, 'r+');
    try {
      const head = Buffer.alloc(SUPERBLOCK_SIZE);
      fs.readSync(fd, head, 0, SUPERBLOCK_SIZE, 0);
      const sb = decodeSuperblock(head, path);
      const differs = (['cluster', 'node', 'grain'] as const).filter((k) => sb[k] !== id[k]);
      if (differs.length > 0) throw new MetaError(`${path} belongs to another volume or node (${differs.join(', ')} differ)`);
      if (sb.flags & FLAG_RUNNING) throw new MetaError(`${path} is open or was not closed cleanly: it cannot be resized`);
      if (volumeSize < sb.volumeSize) throw new MetaError(`${path}: volumes only grow (${sb.volumeSize} bytes now, ${volumeSize} asked)`);
      if (volumeSize === sb.volumeSize) return;
      const bitmapRegion = (size: number) => Math.ceil(Math.ceil(VolumeMeta.bitsFor(size, sb.grain) / 8) / AL_BLOCK) * AL_BLOCK;
      fs.ftruncateSync(fd, SUPERBLOCK_SIZE + bitmapRegion(sb.volumeSize));
      fs.ftruncateSync(fd, SUPERBLOCK_SIZE + bitmapRegion(volumeSize) + 2 * AL_BLOCK);
      fs.fsyncSync(fd);
      fs.writeSync(fd, encodeSuperblock({ ...sb, volumeSize }), 0, SUPERBLOCK_SIZE, 0);
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Grows the metadata of an open volume (an online resize, its I/O paused and drained and its
   * data flushed): a larger bitmap in hot-path memory with the old bits and clear ones for the
   * new range, the file laid out for the new size as grow() does, the activity log emptied and
   * continued behind the longer bitmap; the old bitmap's memory is given back. A crash at any
   * step opens as the old size or the new one, with an empty log (and, being a crash, a
   * checksum resync).
   */
  growOpen(volumeSize: number, hot: Hotpath): void {
    if (this.flushing || this.dirtyPages.size > 0) throw new MetaError(`${this.path}: bitmap write-back in progress; flush it before growing`);
    if (volumeSize <= this.sb.volumeSize) throw new MetaError(`${this.path}: volumes only grow (${this.sb.volumeSize} bytes now, ${volumeSize} asked)`);
    const bigger = hot.bitmap(VolumeMeta.bitsFor(volumeSize, this.sb.grain));
    bigger.bytes().set(this.bitmap.bytes());
    const region = (b: DirtyBitmap) => Math.ceil(b.byteLength / AL_BLOCK) * AL_BLOCK;
    const old = { log: this.activityLog, bitmap: this.bitmap };
    old.log.clear();
    fs.ftruncateSync(this.fd, SUPERBLOCK_SIZE + region(old.bitmap));
    fs.ftruncateSync(this.fd, SUPERBLOCK_SIZE + region(bigger) + 2 * AL_BLOCK);
    fs.fsyncSync(this.fd);
    this.sb = { ...this.sb, volumeSize };
    this.saveIdentity({});
    this.activityLog = new ActivityLog({ fd: this.fd, at: SUPERBLOCK_SIZE + region(bigger), extentBytes: this.al.extentBytes, slots: this.al.slots, sequence: old.log.sequenceNow, flushData: this.al.flushData });
    this.activityLog.updates = old.log.updates;
    this.bitmap = bigger;
    old.bitmap.release();
  }

  /** The size the metadata at `path` records (to finish a resize a crash cut short), or undefined without a file. */
  static recordedSize(path: string): number | undefined {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      const head = Buffer.alloc(SUPERBLOCK_SIZE);
      fs.readSync(fd, head, 0, SUPERBLOCK_SIZE, 0);
      return decodeSuperblock(head, path).volumeSize;
    } finally {
      fs.closeSync(fd);
    }
  }

  get state(): DiskState {
    return this.sb.state;
  }

  get generation(): Generation {
    return structuredClone(this.sb.generation);
  }

  /** When this node started writing without its peer (ms since 1970), 0 when it is not. */
  get trackingSince(): number {
    return this.sb.trackingSince;
  }

  /** The next resync should compare block digests first (the last run crashed). */
  get checksumResync(): boolean {
    return (this.sb.flags & FLAG_CHECKSUM_RESYNC) !== 0;
  }

  /** Persists a new disk state, generation and/or checksum-resync wish (superblock write + fdatasync). */
  saveIdentity(change: { state?: DiskState; generation?: Generation; checksumResync?: boolean; trackingSince?: number }): void {
    const { checksumResync, ...rest } = change;
    this.sb = { ...this.sb, ...rest };
    if (checksumResync !== undefined) this.sb.flags = checksumResync ? this.sb.flags | FLAG_CHECKSUM_RESYNC : this.sb.flags & ~FLAG_CHECKSUM_RESYNC;
    fs.writeSync(this.fd, encodeSuperblock(this.sb), 0, SUPERBLOCK_SIZE, 0);
    fs.fdatasyncSync(this.fd);
  }

  /**
   * Marks grains [first, first + count) dirty and calls `done` once those bits are on stable
   * storage. Bits already set and already durable cost nothing; concurrent calls share one
   * write-back and one fdatasync.
   */
  markDirty(first: number, count: number, done: (err: Error | null) => void): void {
    const pagesFirst = Math.floor(first / 8 / PAGE);
    const pagesLast = Math.floor((first + count - 1) / 8 / PAGE);
    let pending = false;
    for (let p = pagesFirst; p <= pagesLast && !pending; p++) pending = this.dirtyPages.has(p);
    if (!pending && this.bitmap.all(first, count)) return done(null);
    this.bitmap.set(first, count);
    for (let p = pagesFirst; p <= pagesLast; p++) this.dirtyPages.add(p);
    this.waiting.push(done);
    this.writeBack();
  }

  /** Clears grains (after resync); written back with the next batch or `flushBitmap`. */
  clearDirty(first: number, count: number): void {
    this.bitmap.clear(first, count);
    const last = Math.floor((first + count - 1) / 8 / PAGE);
    for (let p = Math.floor(first / 8 / PAGE); p <= last; p++) this.dirtyPages.add(p);
  }

  /** Writes back every changed bitmap page and syncs. */
  flushBitmap(done: (err: Error | null) => void): void {
    this.waiting.push(done);
    this.writeBack();
  }

  private writeBack(): void {
    if (this.flushing) return; // the running batch starts another when it ends
    const waiters = this.waiting;
    const pages = [...this.dirtyPages];
    this.waiting = [];
    this.dirtyPages = new Set();
    this.flushing = true;
    const bytes = this.bitmap.bytes();
    const finish = (err: Error | null): void => {
      this.flushing = false;
      if (err) for (const p of pages) this.dirtyPages.add(p); // retried with the next batch
      for (const w of waiters) w(err);
      if (this.waiting.length > 0) this.writeBack();
    };
    const next = (i: number): void => {
      if (i === pages.length) {
        this.bitmapSyncs++;
        return fs.fdatasync(this.fd, finish);
      }
      const start = pages[i]! * PAGE;
      const len = Math.min(PAGE, bytes.length - start);
      fs.write(this.fd, bytes, start, len, SUPERBLOCK_SIZE + start, (err) => (err ? finish(err) : next(i + 1)));
    };
    next(0);
  }

  /** A clean stop: the activity log is emptied (nothing is in flight any more; the caller made the data durable first). */
  close(): void {
    this.activityLog.clear();
    this.sb.flags &= ~FLAG_RUNNING;
    this.saveIdentity({});
    fs.closeSync(this.fd);
  }

  /**
   * Closes without the clean-stop mark: the activity log and the running flag stay, so the next
   * start recovers as after a crash. For a stop whose data or bitmap flush failed: the writes the
   * log names may not be on the disk.
   */
  closeUnclean(): void {
    fs.closeSync(this.fd);
  }
}
