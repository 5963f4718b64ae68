// The activity log (DRBD's idea): the extents of the volume that have mirrored writes in flight
// or had them recently, recorded durably *before* those writes go out. A node killed in the
// middle of a mirrored write may hold it on one disk and not the other; after a restart the
// activity-log extents are exactly the places where that can be, so they (and the dirty bits)
// are resynced, never the whole volume.
//
// Cost control: an extent already in the log costs nothing; new extents join in batches (one
// block write and one fdatasync for every write that needed a new extent in the same turn);
// the least recently used idle extent leaves when the log is full. Size and extent are config.
//
// On disk: two 4 KiB blocks used in turn (a torn write leaves the other intact), each
//   magic "NBMAL\0\0\0" | sequence u64 | extent bytes u32 | count u32 | count x extent u32 | … | CRC-32
// The block with the highest valid sequence wins. All-zero blocks (a new file) mean "empty".
import fs from 'node:fs';
import zlib from 'node:zlib';

const MAGIC = Buffer.from('NBMAL\0\0\0', 'latin1');
export const AL_BLOCK = 4096;
/** Extents one block can name. */
export const AL_MAX_EXTENTS = (AL_BLOCK - 28) / 4;

export interface ActivityLogRecord {
  readonly sequence: bigint;
  readonly extentBytes: number;
  readonly extents: readonly number[];
}

export function encodeAlBlock(r: ActivityLogRecord): Buffer {
  if (r.extents.length > AL_MAX_EXTENTS) throw new RangeError(`${r.extents.length} activity-log extents exceed ${AL_MAX_EXTENTS}`);
  const b = Buffer.alloc(AL_BLOCK);
  MAGIC.copy(b, 0);
  b.writeBigUInt64BE(r.sequence, 8);
  b.writeUInt32BE(r.extentBytes, 16);
  b.writeUInt32BE(r.extents.length, 20);
  r.extents.forEach((e, i) => b.writeUInt32BE(e, 24 + 4 * i));
  b.writeUInt32BE(zlib.crc32(b.subarray(0, AL_BLOCK - 4)), AL_BLOCK - 4);
  return b;
}

/** A valid block's record, or undefined (zeroes, torn, or not a block). */
export function decodeAlBlock(b: Buffer): ActivityLogRecord | undefined {
  if (b.length < AL_BLOCK || !b.subarray(0, 8).equals(MAGIC)) return undefined;
  if (b.readUInt32BE(AL_BLOCK - 4) !== zlib.crc32(b.subarray(0, AL_BLOCK - 4))) return undefined;
  const count = b.readUInt32BE(20);
  if (count > AL_MAX_EXTENTS) return undefined;
  const extents = Array.from({ length: count }, (_, i) => b.readUInt32BE(24 + 4 * i));
  return { sequence: b.readBigUInt64BE(8), extentBytes: b.readUInt32BE(16), extents };
}

/** The newer of the two blocks stored at `at` in `fd`. */
export function readAlRecord(fd: number, at: number): ActivityLogRecord | undefined {
  const buf = Buffer.alloc(2 * AL_BLOCK);
  fs.readSync(fd, buf, 0, buf.length, at);
  const [x, y] = [decodeAlBlock(buf.subarray(0, AL_BLOCK)), decodeAlBlock(buf.subarray(AL_BLOCK))];
  if (!x || !y) return x ?? y;
  return x.sequence > y.sequence ? x : y;
}

export interface ActivityLogOptions {
  readonly fd: number;
  /** File offset of the two blocks. */
  readonly at: number;
  readonly extentBytes: number;
  /** Extents the log holds at most. */
  readonly slots: number;
  /** The sequence to continue from (the one found on disk). */
  readonly sequence: bigint;
  /**
   * Makes the volume's data durable (its flush). Called before a block that drops an extent is
   * written: once an extent is out of the log, a power cut must not find writes of it that never
   * reached the disk (recovery would not know to resync them). DRBD flushes before such an
   * activity-log transaction too. On a mirrored volume it is a client flush, the peer's copy
   * included (cluster-node.ts). Without it (tests of the log alone) nothing is flushed.
   */
  readonly flushData?: (done: (err: Error | null) => void) => void;
}

type Waiter = { readonly extents: readonly number[]; readonly done: (err: Error | null) => void };

export class ActivityLog {
  /** Active extents, least recently used first (Map keeps insertion order). */
  private readonly active = new Map<number, number>(); // extent -> writes in flight
  /** Extents that joined the log in memory but are not durable yet. */
  private readonly joining = new Set<number>();
  private waiters: Waiter[] = [];
  /** Writes that found every slot busy, waiting for one to go idle. */
  private blocked: Waiter[] = [];
  private writing = false;
  /** An extent left the log since the last block: the data must be durable before the next one. */
  private evicted = false;
  private sequence: bigint;
  /** The disk failed: the log keeps naming what it named (see freeze). */
  private frozen = false;
  /** Activity-log block writes (each with an fdatasync): the cost to watch. */
  updates = 0;

  constructor(private readonly o: ActivityLogOptions) {
    if (o.slots < 1 || o.slots > AL_MAX_EXTENTS) throw new RangeError(`activity log of ${o.slots} extents (1..${AL_MAX_EXTENTS})`);
    this.sequence = o.sequence;
  }

  /** The sequence of the last block written: a log moved elsewhere continues from it. */
  get sequenceNow(): bigint {
    return this.sequence;
  }

  get extentBytes(): number {
    return this.o.extentBytes;
  }

  /** The extents [offset, offset + length) touches. */
  extentsOf(offset: number, length: number): number[] {
    const first = Math.floor(offset / this.o.extentBytes);
    const last = Math.floor((offset + Math.max(length, 1) - 1) / this.o.extentBytes);
    return Array.from({ length: last - first + 1 }, (_, i) => first + i);
  }

  /**
   * A write to [offset, offset + length) is about to go out: `done` runs once its extents are
   * durably in the log (at once when they already are). Pair with `end`.
   */
  begin(offset: number, length: number, done: (err: Error | null) => void): void {
    const extents = this.extentsOf(offset, length);
    if (this.frozen) {
      for (const e of extents) if (this.active.has(e)) this.touch(e, 1);
      return done(null);
    }
    let durable = true;
    for (const e of extents) {
      const n = this.active.get(e);
      if (n === undefined || this.joining.has(e)) {
        durable = false;
        break;
      }
    }
    if (durable) {
      for (const e of extents) this.touch(e, 1);
      return done(null);
    }
    this.admit({ extents, done });
  }

  /** The write that `begin` let through has completed. */
  end(offset: number, length: number): void {
    for (const e of this.extentsOf(offset, length)) if (!this.frozen || this.active.has(e)) this.touch(e, -1);
    if (this.blocked.length > 0) {
      const retry = this.blocked;
      this.blocked = [];
      for (const w of retry) this.admit(w);
    }
  }

  /**
   * The volume's disk failed: from now on no extent leaves the log and none joins (writes reach
   * no disk here; the peer marks them). Its writes from before the failure may not be durable
   * here — a flush no longer reaches the disk — so the log must keep naming them for the
   * recovery after a restart (DRBD keeps a detached disk's activity log as it was). Found by the
   * power-cut chaos: an extent evicted after the failure, then a power cut, left a stale block
   * no bit named.
   */
  freeze(): void {
    this.frozen = true;
    const blocked = this.blocked.splice(0);
    for (const w of blocked) this.admit(w);
  }

  /** Extents in the log now (for tests and status). */
  get extents(): number[] {
    return [...this.active.keys()];
  }

  /** Empties the log durably (clean shutdown, or after its extents were marked dirty). */
  clear(): void {
    this.active.clear();
    this.joining.clear();
    fs.writeSync(this.o.fd, this.nextBlock([]), 0, AL_BLOCK, this.blockAt());
    fs.fdatasyncSync(this.o.fd);
  }

  private touch(e: number, delta: number): void {
    const n = (this.active.get(e) ?? 0) + delta;
    this.active.delete(e); // re-insert: most recently used last
    this.active.set(e, n);
  }

  /** Brings the write's extents into the log (evicting idle ones), then waits for durability. */
  private admit(w: Waiter): void {
    if (this.frozen) {
      for (const e of w.extents) if (this.active.has(e)) this.touch(e, 1);
      return w.done(null);
    }
    const missing = w.extents.filter((e) => !this.active.has(e));
    const idle = [...this.active].filter(([e, n]) => n === 0 && !w.extents.includes(e)).map(([e]) => e);
    if (this.active.size + missing.length - Math.min(idle.length, missing.length) > this.o.slots) {
      this.blocked.push(w); // every slot has writes in flight: wait for one to finish
      return;
    }
    for (let i = 0; this.active.size + missing.length > this.o.slots && i < idle.length; i++) {
      this.active.delete(idle[i]!);
      this.evicted = true;
    }
    for (const e of missing) {
      this.active.set(e, 0);
      this.joining.add(e);
    }
    for (const e of w.extents) this.touch(e, 1);
    if (missing.length === 0 && !w.extents.some((e) => this.joining.has(e))) return w.done(null);
    this.waiters.push(w);
    // Wait for the end of this turn: every write that needs a new extent now shares the block.
    if (this.waiters.length === 1) process.nextTick(() => this.writeBack());
  }

  /** One block write + fdatasync for every extent that joined since the last one. */
  private writeBack(): void {
    if (this.writing || this.waiters.length === 0) return;
    this.writing = true;
    const waiters = this.waiters;
    const joined = [...this.joining];
    this.waiters = [];
    const block = this.nextBlock([...this.active.keys()]);
    const finish = (err: Error | null): void => {
      this.writing = false;
      if (!err) for (const e of joined) this.joining.delete(e);
      this.updates++;
      for (const w of waiters) w.done(err);
      this.writeBack();
    };
    const writeBlock = (): void => fs.write(this.o.fd, block, 0, AL_BLOCK, this.blockAt(), (err) => (err ? finish(err) : fs.fdatasync(this.o.fd, finish)));
    if (!this.evicted || !this.o.flushData) return writeBlock();
    this.evicted = false;
    this.o.flushData((err) => (err ? finish(err) : writeBlock()));
  }

  private nextBlock(extents: number[]): Buffer {
    this.sequence++;
    return encodeAlBlock({ sequence: this.sequence, extentBytes: this.o.extentBytes, extents });
  }

  /** Where the block for the current sequence goes: the two blocks alternate. */
  private blockAt(): number {
    return this.o.at + Number(this.sequence % 2n) * AL_BLOCK;
  }
}
