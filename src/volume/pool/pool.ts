// A thin pool: one file (or block device) per node holding every volume's data in allocation
// units, mapped on first write (format.ts for the layout, committer.ts for durability,
// unit-map.ts for the live state). Volumes over-commit it: their sizes may add up to more than
// the pool. A write needing a unit when none is free fails with ENOSPC (or, with onFull
// "queue", waits up to holdMs for space, dm-thin's queue_if_no_space) — never anything worse.
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { syncDirectoryOf } from '../../durable.js';
import type { Hotpath } from '../../hotpath/index.js';
import type { Logger } from '../../log.js';
import { NbdErr } from '../../protocol/constants.js';
import { NbdError } from '../../protocol/errors.js';
import { fileOps } from '../fileops.js';
import type { Done } from '../volume.js';
import { Committer } from './committer.js';
import {
  BLOCK,
  bodyBytes,
  encodeCheckpoint,
  encodeSuperblock,
  JOURNAL_BLOCKS,
  layout,
  MAX_VOLUMES,
  PoolFormatError,
  readVolumeEntry,
  reverseMapOffset,
  writeVolumeEntry,
  type Checkpoint,
  type Geometry,
} from './format.js';
import { loadPool, readGeometry } from './replay.js';
import { ThinVolume } from './thin-volume.js';
import { UnitMap } from './unit-map.js';

/** Default allocation unit: see docs/BENCHMARKS.md (bench:thin, unit sizes) for why. */
export const DEFAULT_UNIT = 1024 * 1024;
/** Metadata room made at creation, as a multiple of the pool's size: it can grow online this far. */
export const DEFAULT_GROWTH = 4;
export const DEFAULT_THRESHOLDS = [75, 90] as const;

export interface PoolOptions {
  /** Data capacity. A missing pool is created with it; a larger size than the pool's grows it. */
  readonly size?: number;
  /** Allocation unit, fixed at creation (power of two, 64K-64M). */
  readonly unitSize?: number;
  /** Largest size the pool may grow to (metadata room, 8 bytes per unit); default 4 × size. */
  readonly maxSize?: number;
  /** A write that finds no free unit: `error` (ENOSPC at once, default) or `queue` (wait up to holdMs). */
  readonly onFull?: 'error' | 'queue';
  readonly holdMs?: number;
  /** Percentages of the pool in use that are logged once when crossed (default 75, 90). */
  readonly thresholds?: readonly number[];
  /** Mapping changes are committed at least this often (default 1 s). */
  readonly commitIntervalMs?: number;
  /** The thin volumes wanted: created when missing, grown when larger than in the pool. */
  readonly volumes?: ReadonlyArray<{ readonly name: string; readonly size: number }>;
  readonly log: Logger;
  readonly hot: Hotpath;
}

export interface PoolStatus {
  path: string;
  sizeBytes: number;
  usedBytes: number;
  freeBytes: number;
  /** Unmapped, reusable after the next commit (or once their I/O is done). */
  pendingFreeBytes: number;
  unitBytes: number;
  /** The pool can grow online up to this (metadata room). */
  maxSizeBytes: number;
  /** Sum of the thin volumes' sizes. */
  virtualBytes: number;
  /** virtualBytes / sizeBytes. */
  overcommit: number;
  usedPercent: number;
  thresholds: number[];
  thresholdsCrossed: number[];
  onFull: 'error' | 'queue';
  /** Writes refused for want of space since start-up. */
  enospcErrors: number;
  metadata: { commits: number; journalBlocks: number; checkpoints: number; syncs: number; pendingRecords: number };
}

/** No free unit in the pool: ENOSPC for the client, and no disk failure (mirror-errors.ts isPoolFull). */
export class PoolFullError extends NbdError {
  readonly poolFull = true;
  constructor(path: string) {
    super(NbdErr.ENOSPC, `thin pool ${path} is full`);
  }
}

interface SpaceWaiter {
  readonly units: number;
  readonly cb: (err: Error | null) => void;
  readonly timer: NodeJS.Timeout;
}

export class Pool {
  readonly map: UnitMap;
  readonly committer: Committer;
  readonly unitSize: number;
  readonly dataOffset: number;
  readonly volumes = new Map<string, ThinVolume>();
  readonly onFull: 'error' | 'queue';
  readonly holdMs: number;
  readonly hot: Hotpath;
  readonly log: Logger;
  enospcErrors = 0;
  private readonly thresholds: number[];
  private readonly crossed = new Set<number>();
  private readonly spaceWaiters: SpaceWaiter[] = [];
  /** Slots of deleted volumes until the commit that drops them is durable. */
  private readonly releasing = new Set<number>();
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  private constructor(
    readonly path: string,
    readonly fd: number,
    private readonly g: Geometry,
    committed: Checkpoint,
    slot: 0 | 1,
    o: PoolOptions,
  ) {
    this.unitSize = g.unitSize;
    this.dataOffset = g.dataOffset;
    this.hot = o.hot;
    this.log = o.log;
    this.onFull = o.onFull ?? 'error';
    this.holdMs = o.holdMs ?? 30_000;
    this.thresholds = [...(o.thresholds ?? DEFAULT_THRESHOLDS)].sort((a, b) => a - b);
    this.map = UnitMap.fromBody(committed.body, g.maxUnits, committed.unitCount, MAX_VOLUMES, g.unitSize);
    this.committer = new Committer(fd, g, committed, slot, 0, (units) => this.freed(units), () => this.map.takeWaiting());
    for (let s = 0; s < MAX_VOLUMES; s++) {
      const e = readVolumeEntry(committed.body, s);
      if (e) this.volumes.set(e.name, new ThinVolume(this, s, e.name, e.size));
    }
    this.timer = setInterval(() => {
      if (this.committer.dirty) this.commitTable();
    }, o.commitIntervalMs ?? 1000).unref();
    this.checkThresholds();
  }

  /**
   * Opens the pool at `path`, creating it (a missing file, or a block device whose first 4 KiB
   * are zero) with `size`. The committed state is loaded and written as a fresh checkpoint, so
   * the journal restarts clean; wanted volumes are created or grown in that same checkpoint.
   */
  static open(path: string, o: PoolOptions): Pool {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (o.size === undefined) throw new Error(`pool ${path} does not exist; give its size to create it`, { cause: err });
      Pool.createFile(path, o);
      fd = fs.openSync(path, 'r+');
    }
    try {
      const st = fs.fstatSync(fd);
      if (st.isBlockDevice() && readGeometry(fd, path) === undefined) Pool.createOnDevice(fd, path, o);
      else if (!st.isFile() && !st.isBlockDevice()) throw new Error(`${path} is neither a file nor a block device`);
      const loaded = loadPool(fd, path);
      if (loaded.problems.length > 0) o.log.error({ pool: path, problems: loaded.problems.slice(0, 20) }, 'pool journal records broke an invariant and were skipped: run nbd-mirror pool check');
      const c = loaded.checkpoint;
      const g = loaded.geometry;
      Pool.adjustSize(fd, path, g, c, o);
      Pool.adjustVolumes(g, c, o.volumes ?? []);
      // Past every block a torn commit may have left in the journal: those are never replayed.
      c.seq += JOURNAL_BLOCKS + 1;
      const slot = (loaded.slot ^ 1) as 0 | 1;
      fs.writevSync(fd, encodeCheckpoint(c), g.ckptOffsets[slot]);
      fs.fdatasyncSync(fd);
      o.log.info({ pool: path, unitBytes: g.unitSize, units: c.unitCount, replayedJournalBlocks: loaded.journalBlocks }, 'pool open');
      return new Pool(path, fd, g, c, slot, o);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  /** A new pool file: built under a temporary name, then renamed, so a crash leaves none or a whole one. */
  private static createFile(path: string, o: PoolOptions): void {
    const unitSize = o.unitSize ?? DEFAULT_UNIT;
    const units = Math.floor(o.size! / unitSize);
    if (units < 1) throw new PoolFormatError(`pool size ${o.size} is less than one allocation unit (${unitSize})`);
    const g = layout(unitSize, Math.max(units, Math.floor((o.maxSize ?? DEFAULT_GROWTH * o.size!) / unitSize)), randomBytes(16).toString('hex'));
    const tmp = `${path}.new`;
    const fd = fs.openSync(tmp, 'w+');
    try {
      fs.ftruncateSync(fd, g.dataOffset + units * unitSize);
      Pool.writeFresh(fd, g, units);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, path);
    syncDirectoryOf(path);
  }

  /** A block device without a pool: initialised only if its first block is zero (never over a filesystem). */
  private static createOnDevice(fd: number, path: string, o: PoolOptions): void {
    const head = Buffer.alloc(BLOCK);
    fs.readSync(fd, head, 0, BLOCK, 0);
    if (head.some((b) => b !== 0)) throw new PoolFormatError(`${path} holds no pool but is not blank: zero its first 4 KiB to make a pool on it`);
    const unitSize = o.unitSize ?? DEFAULT_UNIT;
    const deviceBytes = fileOps.seekEnd(fd);
    const guess = layout(unitSize, Math.floor(deviceBytes / unitSize), '00');
    const units = Math.min(Math.floor((o.size ?? deviceBytes) / unitSize), Math.floor((deviceBytes - guess.dataOffset) / unitSize));
    if (units < 1) throw new PoolFormatError(`${path} is too small for a pool`);
    Pool.writeFresh(fd, layout(unitSize, Math.floor((deviceBytes - guess.dataOffset) / unitSize), randomBytes(16).toString('hex')), units);
  }

  /** Empty checkpoint in slot 0 and a zeroed journal, then the superblock last. */
  private static writeFresh(fd: number, g: Geometry, units: number): void {
    fs.writevSync(fd, encodeCheckpoint({ seq: 0, unitCount: units, body: Buffer.alloc(bodyBytes(g)) }), g.ckptOffsets[0]);
    fs.writeSync(fd, Buffer.alloc(BLOCK * JOURNAL_BLOCKS), 0, BLOCK * JOURNAL_BLOCKS, g.journalOffset);
    fs.fdatasyncSync(fd);
    fs.writeSync(fd, encodeSuperblock(g), 0, BLOCK, 0);
    fs.fsyncSync(fd);
  }

  /** A larger configured size grows the pool (into the metadata room made at creation). */
  private static adjustSize(fd: number, path: string, g: Geometry, c: Checkpoint, o: PoolOptions): void {
    if (o.size === undefined) return;
    const units = Math.floor(o.size / g.unitSize);
    if (units < c.unitCount) return o.log.warn({ pool: path, size: o.size, poolBytes: c.unitCount * g.unitSize }, 'configured pool size is smaller than the pool: pools do not shrink; keeping its size');
    if (units === c.unitCount) return;
    if (units > g.maxUnits) throw new PoolFormatError(`pool ${path} can grow to ${g.maxUnits * g.unitSize} bytes (its metadata room); ${o.size} is more`);
    extendFile(fd, g.dataOffset + units * g.unitSize);
    o.log.info({ pool: path, fromBytes: c.unitCount * g.unitSize, toBytes: units * g.unitSize }, 'pool grown');
    c.unitCount = units;
  }

  private static adjustVolumes(g: Geometry, c: Checkpoint, wanted: ReadonlyArray<{ name: string; size: number }>): void {
    for (const w of wanted) {
      let free = -1;
      let found = false;
      for (let s = 0; s < MAX_VOLUMES && !found; s++) {
        const e = readVolumeEntry(c.body, s);
        if (!e) {
          if (free < 0) free = s;
          continue;
        }
        if (e.name !== w.name) continue;
        found = true;
        if (w.size > e.size) writeVolumeEntry(c.body, s, { name: w.name, size: w.size });
        else if (w.size < e.size) throw new PoolFormatError(`volume ${w.name} is ${e.size} bytes in the pool; thin volumes do not shrink (asked for ${w.size})`);
      }
      if (found) continue;
      if (free < 0) throw new PoolFormatError(`the pool holds ${MAX_VOLUMES} volumes already`);
      writeVolumeEntry(c.body, free, { name: w.name, size: w.size });
    }
    void g;
  }

  volume(name: string): ThinVolume {
    const v = this.volumes.get(name);
    if (!v) throw new Error(`no volume "${name}" in pool ${this.path}`);
    return v;
  }

  /**
   * Removes a volume and frees its units (item 7's hook: online delete). The caller stopped all
   * I/O to it; its units are reusable once the checkpoint that drops it is durable.
   */
  deleteVolume(name: string, done: Done): void {
    const v = this.volume(name);
    this.volumes.delete(name);
    v.detach();
    this.map.dropVolume(v.slot);
    const owner = v.slot + 1;
    this.committer.changeTable((c) => {
      writeVolumeEntry(c.body, v.slot, undefined);
      const base = reverseMapOffset();
      for (let u = 0; u < c.unitCount; u++) if (c.body.readUInt32BE(base + u * 8) === owner) c.body.writeBigUInt64BE(0n, base + u * 8);
    });
    // The slot goes to no new volume before this commit: its table change clears whatever the
    // slot owns in the checkpoint, which would take a newcomer's mappings with it.
    this.releasing.add(v.slot);
    this.committer.commit((err) => {
      if (!err) this.releasing.delete(v.slot);
      done(err);
    });
  }

  /**
   * A new, empty volume (created online): served at once, reading zeros; its table entry is
   * durable with the next commit (asked for now).
   */
  addVolume(name: string, size: number): ThinVolume {
    if (this.volumes.has(name)) throw new Error(`pool ${this.path} has a volume "${name}" already`);
    const used = new Set([...this.volumes.values()].map((v) => v.slot));
    let slot = 0;
    while (slot < MAX_VOLUMES && (used.has(slot) || this.releasing.has(slot))) slot++;
    if (slot === MAX_VOLUMES) throw new PoolFormatError(`the pool holds ${MAX_VOLUMES} volumes already`);
    this.map.addVolume(slot, Math.ceil(size / this.unitSize));
    this.committer.changeTable((c) => writeVolumeEntry(c.body, slot, { name, size }));
    const v = new ThinVolume(this, slot, name, size);
    this.volumes.set(name, v);
    this.commitTable();
    return v;
  }

  /** A volume grows (online): the new range is unmapped, so it reads zeros; durable with the next commit. */
  growVolume(v: ThinVolume, size: number): void {
    this.map.resizeVolume(v.slot, Math.ceil(size / this.unitSize));
    this.committer.changeTable((c) => writeVolumeEntry(c.body, v.slot, { name: v.name, size }));
    this.commitTable();
  }

  private commitTable(): void {
    this.committer.commit((err) => err && this.log.error({ pool: this.path, err: err.message }, 'pool metadata commit failed: the pool takes no more changes'));
  }

  /** Grows the pool online (a larger size in the config, applied on reload). */
  grow(size: number, done: Done): void {
    const units = Math.floor(size / this.unitSize);
    if (units <= this.map.unitCount) return done(null);
    if (units > this.g.maxUnits) return done(new PoolFormatError(`pool ${this.path} can grow to ${this.g.maxUnits * this.unitSize} bytes (its metadata room made at creation)`));
    try {
      extendFile(this.fd, this.dataOffset + units * this.unitSize);
    } catch (err) {
      return done(err as Error);
    }
    const from = this.map.unitCount;
    this.committer.changeTable((c) => (c.unitCount = units));
    // New units are handed out only once a checkpoint that counts them is durable: a mapping
    // of a unit past the committed end would be refused on replay.
    this.committer.commit((err) => {
      if (err) return done(err);
      this.map.grow(units);
      this.log.info({ pool: this.path, fromBytes: from * this.unitSize, toBytes: units * this.unitSize }, 'pool grown online');
      this.checkThresholds();
      this.wakeSpaceWaiters();
      done(null);
    });
  }

  /**
   * `units` more units may be taken by this caller: now (true), or not (false). Units freed but
   * not committed are made reusable by a commit first when that would be enough.
   */
  hasSpace(units: number): boolean {
    return this.map.available >= units;
  }

  /**
   * Calls back when `units` are available: at once, after a commit releases freed units, or
   * (onFull "queue") when space appears within holdMs. ENOSPC otherwise.
   */
  whenSpace(units: number, cb: (err: Error | null) => void): void {
    if (this.hasSpace(units)) return cb(null);
    if (this.committer.failed) return cb(this.committer.failed);
    if (this.map.pendingCommit > 0 && this.map.available + this.map.pendingFree >= units) {
      // Freed units wait for their unmap to be durable: commit now rather than refuse.
      return this.committer.commit((err) => (err ? cb(err) : this.hasSpace(units) || this.onFull === 'queue' ? this.whenSpace(units, cb) : cb(this.noSpace(units))));
    }
    if (this.onFull === 'error') return cb(this.noSpace(units));
    const waiter: SpaceWaiter = {
      units,
      cb,
      timer: setTimeout(() => {
        const i = this.spaceWaiters.indexOf(waiter);
        if (i >= 0) this.spaceWaiters.splice(i, 1);
        cb(this.noSpace(units));
      }, this.holdMs),
    };
    this.spaceWaiters.push(waiter);
  }

  noSpace(units: number): PoolFullError {
    this.enospcErrors++;
    if (this.enospcErrors === 1 || this.enospcErrors % 1000 === 0) {
      this.log.warn({ pool: this.path, wantedUnits: units, freeUnits: this.map.freeUnits, reserved: this.map.reserved, enospcErrors: this.enospcErrors }, 'pool full: a write needing new units fails with ENOSPC (reads, overwrites and other volumes go on)');
    }
    return new PoolFullError(this.path);
  }

  /** After an allocation: a threshold crossed is logged once. */
  checkThresholds(): void {
    const pct = this.usedPercent();
    for (const t of this.thresholds) {
      if (pct >= t && !this.crossed.has(t)) {
        this.crossed.add(t);
        this.log.warn({ pool: this.path, usedPercent: Number(pct.toFixed(1)), threshold: t }, `pool use crossed ${t} %`);
      } else if (pct < t && this.crossed.has(t)) {
        this.crossed.delete(t);
        this.log.info({ pool: this.path, usedPercent: Number(pct.toFixed(1)), threshold: t }, `pool use back under ${t} %`);
      }
    }
  }

  private usedPercent(): number {
    return this.map.unitCount === 0 ? 100 : (100 * this.map.mapped) / this.map.unitCount;
  }

  /** A commit made these units reusable. */
  private freed(units: number[]): void {
    this.map.release(units);
    if (units.length > 0) {
      this.checkThresholds();
      this.wakeSpaceWaiters();
    }
  }

  /** An I/O on `unit` ended; a parked unit may become free. */
  unpin(unit: number): void {
    if (this.map.unpin(unit)) this.wakeSpaceWaiters();
  }

  private wakeSpaceWaiters(): void {
    while (this.spaceWaiters.length > 0 && this.hasSpace(this.spaceWaiters[0]!.units)) {
      const w = this.spaceWaiters.shift()!;
      clearTimeout(w.timer);
      w.cb(null);
    }
  }

  status(): PoolStatus {
    const m = this.map;
    const u = this.unitSize;
    const sizeBytes = m.unitCount * u;
    const virtualBytes = [...this.volumes.values()].reduce((s, v) => s + v.size, 0);
    return {
      path: this.path,
      sizeBytes,
      usedBytes: m.mapped * u,
      freeBytes: m.freeUnits * u,
      pendingFreeBytes: m.pendingFree * u,
      unitBytes: u,
      maxSizeBytes: this.g.maxUnits * u,
      virtualBytes,
      overcommit: sizeBytes === 0 ? 0 : virtualBytes / sizeBytes,
      usedPercent: this.usedPercent(),
      thresholds: this.thresholds,
      thresholdsCrossed: [...this.crossed].sort((a, b) => a - b),
      onFull: this.onFull,
      enospcErrors: this.enospcErrors,
      metadata: { ...this.committer.counters, pendingRecords: this.committer.pendingRecords },
    };
  }

  /** Commits what is left and closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const w of this.spaceWaiters.splice(0)) {
      clearTimeout(w.timer);
      w.cb(new NbdError(NbdErr.ESHUTDOWN, 'pool closing'));
    }
    await new Promise<void>((resolve) => this.committer.commit(() => resolve()));
    fs.closeSync(this.fd);
    const st = this.status();
    this.log.info({ pool: this.path, usedBytes: st.usedBytes, sizeBytes: st.sizeBytes, metadata: st.metadata }, 'pool closed');
  }
}

/** A pool file grows to `bytes` (sparse); a block device has its room from creation (maxUnits). */
function extendFile(fd: number, bytes: number): void {
  const st = fs.fstatSync(fd);
  if (st.isFile() && st.size < bytes) fs.ftruncateSync(fd, bytes);
}
