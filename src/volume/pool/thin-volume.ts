// A thin volume: a Volume whose data lives in a pool's units, mapped on first write.
//
// - WRITE: a unit is allocated on its first write that is not all zero; the rest of a new unit
//   is zeroed first (so a reused unit never shows another volume's old data); a whole-unit
//   write of zeros unmaps the unit (zero detection in WASM, src/hotpath/); a write that needs
//   more units than are free fails with ENOSPC before anything changes (all or nothing).
// - TRIM / WRITE_ZEROES: whole units are unmapped, partial ones zeroed in place.
// - FLUSH and FUA commit the mapping changes (committer.ts).
// - Every read and write pins the units it touches: a unit unmapped meanwhile is reused only
//   once the I/O is done, so it can neither land in nor be read from the next owner's data.
import fs from 'node:fs';
import { AllocState, NbdErr } from '../../protocol/constants.js';
import { NbdError } from '../../protocol/errors.js';
import { ASYNC_MIN } from '../file-volume.js';
import { fileOps } from '../fileops.js';
import type { Done, Extent, Reservation, Volume, VolumeCapabilities, ZeroOptions } from '../volume.js';
import type { Pool } from './pool.js';

interface Piece {
  readonly vunit: number;
  /** Offset in the unit. */
  readonly at: number;
  readonly length: number;
  /** Offset in the request. */
  readonly from: number;
}

export class ThinVolume implements Volume {
  readonly capabilities: VolumeCapabilities = {
    readOnly: false,
    flush: true,
    fua: true,
    trim: true,
    zero: true,
    fastZero: true,
    cache: true,
    // One pool, one fd, one page cache: a flush on any connection covers them all.
    multiConn: true,
  };
  /** Virtual units promised to reservations (mirrored writes waiting for their peer): unit → count. */
  private readonly reserved = new Map<number, number>();
  private deleted = false;

  constructor(
    private readonly pool: Pool,
    readonly slot: number,
    readonly name: string,
    public size: number,
  ) {}

  allocatedBytes(): number {
    return this.pool.map.mappedUnits(this.slot) * this.pool.unitSize;
  }

  /** Grows to `size` bytes while served (volumes online); the new range reads zeros. */
  grow(size: number): void {
    this.pool.growVolume(this, size);
    this.size = size;
  }

  /** The volume was deleted from its pool: every request fails from now on. */
  detach(): void {
    this.deleted = true;
  }

  private pieces(offset: number, length: number): Piece[] {
    const u = this.pool.unitSize;
    const out: Piece[] = [];
    for (let pos = offset, end = offset + length; pos < end; ) {
      const vunit = Math.floor(pos / u);
      const at = pos - vunit * u;
      const n = Math.min(u - at, end - pos);
      out.push({ vunit, at, length: n, from: pos - offset });
      pos += n;
    }
    return out;
  }

  private refusal(): Error | null {
    if (this.deleted) return new NbdError(NbdErr.EIO, `volume ${this.name} was deleted`);
    return this.pool.committer.failed;
  }

  private position(unit: number, at: number): number {
    return this.pool.dataOffset + unit * this.pool.unitSize + at;
  }

  /**
   * The unit holding all of [offset, offset + length) when the request lies inside one mapped
   * unit and is not all of it (the common small overwrite and read: no piece list, no closures), else -1.
   */
  private insideMapped(offset: number, length: number): number {
    const u = this.pool.unitSize;
    const vunit = Math.floor(offset / u);
    if (length >= u || offset + length > (vunit + 1) * u) return -1;
    return this.pool.map.lookup(this.slot, vunit);
  }

  read(buf: Buffer, offset: number, done: Done): void {
    const refused = this.refusal();
    if (refused) return done(refused);
    const { map } = this.pool;
    const one = this.insideMapped(offset, buf.length);
    if (one >= 0) return this.pinned(one, buf.length, (cb) => this.readPiece(buf, this.position(one, offset % this.pool.unitSize), cb), done);
    const jobs: Array<{ unit: number; p: Piece }> = [];
    for (const p of this.pieces(offset, buf.length)) {
      const unit = map.lookup(this.slot, p.vunit);
      if (unit < 0) buf.fill(0, p.from, p.from + p.length);
      else jobs.push({ unit, p });
    }
    this.io(jobs, (unit, p, cb) => this.readPiece(buf.subarray(p.from, p.from + p.length), this.position(unit, p.at), cb), done);
  }

  /**
   * Runs `fn` (an I/O of `length` bytes) with `unit` pinned. Transfers under ASYNC_MIN run
   * synchronously (readPiece, writePiece): nothing can unmap and reuse the unit meanwhile, so
   * they need no pin.
   */
  private pinned(unit: number, length: number, fn: (cb: Done) => void, done: Done): void {
    if (length < ASYNC_MIN) return fn(done);
    this.pool.map.pin(unit);
    fn((err) => {
      this.pool.unpin(unit);
      done(err);
    });
  }

  /** Runs `each` for every job with its unit pinned; `done` gets the first error. */
  private io(jobs: Array<{ unit: number; p: Piece }>, each: (unit: number, p: Piece, cb: Done) => void, done: Done): void {
    let left = jobs.length;
    if (left === 0) return done(null);
    let error: Error | null = null;
    for (const { unit, p } of jobs) {
      this.pool.map.pin(unit);
      each(unit, p, (err) => {
        this.pool.unpin(unit);
        error ??= err;
        if (--left === 0) done(error);
      });
    }
  }

  private readPiece(buf: Buffer, position: number, cb: Done): void {
    if (buf.length >= ASYNC_MIN) return readFully(this.pool.fd, buf, 0, position, cb);
    try {
      for (let got = 0; got < buf.length; ) {
        const n = fs.readSync(this.pool.fd, buf, got, buf.length - got, position + got);
        if (n === 0) throw new NbdError(NbdErr.EIO, 'pool file shorter than its units');
        got += n;
      }
    } catch (err) {
      return cb(err as Error);
    }
    cb(null);
  }

  private writePiece(buf: Buffer, position: number, cb: Done): void {
    if (buf.length >= ASYNC_MIN) return writeFully(this.pool.fd, buf, 0, position, cb);
    try {
      for (let put = 0; put < buf.length; ) put += fs.writeSync(this.pool.fd, buf, put, buf.length - put, position + put);
    } catch (err) {
      return cb(err as Error);
    }
    cb(null);
  }

  /** Units a write of `buf` at `offset` would allocate (not all zero, not mapped, not already promised). */
  private unitsNeeded(buf: Buffer, offset: number, countReserved: boolean): number[] {
    const { map } = this.pool;
    const out: number[] = [];
    for (const p of this.pieces(offset, buf.length)) {
      if (map.lookup(this.slot, p.vunit) >= 0 || (!countReserved && this.reserved.has(p.vunit))) continue;
      if (!this.pool.hot.allZero(buf.subarray(p.from, p.from + p.length))) out.push(p.vunit);
    }
    return out;
  }

  /**
   * Promises the units a write of `buf` at `offset` will allocate, so that write cannot fail
   * for want of space (a mirrored write reserves here before it asks the peer: both nodes then
   * allocate or both fail). Null when it needs none; an ENOSPC error when they are not free.
   */
  reserve(buf: Buffer, offset: number): Reservation | Error | null {
    const refused = this.refusal();
    if (refused) return refused;
    const fresh = this.unitsNeeded(buf, offset, false);
    const { map } = this.pool;
    if (fresh.length > map.available) return this.pool.noSpace(fresh.length);
    const held: number[] = [];
    for (const p of this.pieces(offset, buf.length)) {
      const refs = this.reserved.get(p.vunit);
      if (refs !== undefined) {
        this.reserved.set(p.vunit, refs + 1);
        held.push(p.vunit);
      } else if (fresh.includes(p.vunit)) {
        this.reserved.set(p.vunit, 1);
        map.reserved++;
        held.push(p.vunit);
      }
    }
    if (held.length === 0) return null;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        for (const v of held) {
          const n = this.reserved.get(v)! - 1;
          if (n > 0) {
            this.reserved.set(v, n);
            continue;
          }
          this.reserved.delete(v);
          // Still unmapped: the promise was not used (the write failed, or wrote zeros).
          if (map.lookup(this.slot, v) < 0) map.reserved--;
        }
      },
    };
  }

  private unmap(vunit: number): void {
    this.pool.committer.record(this.pool.map.unmap(this.slot, vunit));
    // A promised unit is owed again (it was taken when the unit was mapped).
    if (this.reserved.has(vunit)) this.pool.map.reserved++;
  }

  waitForSpace(buf: Buffer, offset: number, done: Done): void {
    const need = this.unitsNeeded(buf, offset, false).length;
    if (need <= this.pool.map.available) return done(null);
    this.pool.whenSpace(need, done);
  }

  write(buf: Buffer, offset: number, fua: boolean, done: Done): void {
    const refused = this.refusal();
    if (refused) return done(refused);
    const { map, hot, committer } = this.pool;
    // An overwrite inside one allocated unit: nothing to allocate, free or check.
    const one = this.insideMapped(offset, buf.length);
    if (one >= 0) return this.pinned(one, buf.length, (cb) => this.writePiece(buf, this.position(one, offset % this.pool.unitSize), cb), fua ? (err) => (err ? done(err) : committer.commit(done)) : done);
    const need = this.unitsNeeded(buf, offset, false).length;
    if (need > map.available) return this.pool.whenSpace(need, (err) => (err ? done(err) : this.write(buf, offset, fua, done)));
    const u = this.pool.unitSize;
    const jobs: Array<{ unit: number; p: Piece }> = [];
    try {
      for (const p of this.pieces(offset, buf.length)) {
        const data = buf.subarray(p.from, p.from + p.length);
        let unit = map.lookup(this.slot, p.vunit);
        if (unit >= 0) {
          // A whole unit of zeros gives the unit back (it reads as zeros unmapped).
          if (p.length === u && hot.allZero(data)) this.unmap(p.vunit);
          else jobs.push({ unit, p });
          continue;
        }
        if (hot.allZero(data)) continue; // reads as zeros already: nothing to allocate
        if (this.reserved.has(p.vunit)) map.reserved--; // its promised unit is taken now
        const r = map.allocate(this.slot, p.vunit);
        unit = r.unit;
        // The rest of a new unit reads as zeros, whatever it held before; done (and made
        // durable by the commit's first fdatasync) before the mapping can be committed.
        if (p.length < u) zeroRange(this.pool.fd, this.position(unit, 0), u);
        committer.record(r);
        jobs.push({ unit, p });
      }
    } catch (err) {
      return done(err as Error);
    }
    if (need > 0) this.pool.checkThresholds();
    this.io(jobs, (unit, p, cb) => this.writePiece(buf.subarray(p.from, p.from + p.length), this.position(unit, p.at), cb), (err) => {
      if (err || !fua) return done(err);
      committer.commit(done);
    });
  }

  flush(done: Done): void {
    const refused = this.refusal();
    if (refused) return done(refused);
    this.pool.committer.commit(done);
  }

  trim(offset: number, length: number, fua: boolean, done: Done): void {
    this.release(offset, length, false, fua, done);
  }

  zeroesFast(): boolean {
    return true;
  }

  zero(offset: number, length: number, opts: ZeroOptions, done: Done): void {
    this.release(offset, length, opts.noHole, opts.fua, done);
  }

  /** TRIM and WRITE_ZEROES: whole units unmapped (kept and zeroed with noHole), partial ones zeroed. */
  private release(offset: number, length: number, noHole: boolean, fua: boolean, done: Done): void {
    const refused = this.refusal();
    if (refused) return done(refused);
    const { map, committer } = this.pool;
    try {
      for (const p of this.pieces(offset, length)) {
        const unit = map.lookup(this.slot, p.vunit);
        if (unit < 0) continue;
        if (p.length === this.pool.unitSize && !noHole) {
          this.unmap(p.vunit);
          continue;
        }
        map.pin(unit);
        try {
          zeroRange(this.pool.fd, this.position(unit, p.at), p.length, noHole);
        } finally {
          this.pool.unpin(unit);
        }
      }
    } catch (err) {
      return done(err as Error);
    }
    if (fua) committer.commit(done);
    else done(null);
  }

  cache(_offset: number, _length: number, done: Done): void {
    done(null); // advisory; the pool's page cache serves reads
  }

  extents(offset: number, length: number, max: number, done: (err: Error | null, extents: Extent[]) => void): void {
    const { map } = this.pool;
    const out: Extent[] = [];
    for (const p of this.pieces(offset, length)) {
      const flags = map.lookup(this.slot, p.vunit) < 0 ? AllocState.HOLE | AllocState.ZERO : AllocState.DATA;
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += p.length;
      else if (out.length === max) break;
      else out.push({ length: p.length, flags });
    }
    done(null, out);
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.pool.committer.commit(() => resolve()));
  }
}

const ZERO_CHUNK = 1024 * 1024;
let zeroChunk: Buffer | undefined;

/**
 * Zeroes a range of the pool: a hole where the file (or device) can punch one (not with
 * `keepAllocated`), else fallocate's zero range, else written zeroes (filesystems without either).
 */
function zeroRange(fd: number, position: number, length: number, keepAllocated = false): void {
  for (const call of keepAllocated ? [fileOps.zeroRange] : [fileOps.punchHole, fileOps.zeroRange]) {
    try {
      return call(fd, position, length);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EOPNOTSUPP') throw err;
    }
  }
  zeroChunk ??= Buffer.alloc(ZERO_CHUNK);
  for (let pos = position, end = position + length; pos < end; ) pos += fs.writeSync(fd, zeroChunk, 0, Math.min(ZERO_CHUNK, end - pos), pos);
}

function readFully(fd: number, buf: Buffer, got: number, position: number, done: Done): void {
  fs.read(fd, buf, got, buf.length - got, position + got, (err, n) => {
    if (err) return done(err);
    if (n === 0) return done(new NbdError(NbdErr.EIO, 'pool file shorter than its units'));
    if (got + n === buf.length) return done(null);
    readFully(fd, buf, got + n, position, done);
  });
}

function writeFully(fd: number, buf: Buffer, put: number, position: number, done: Done): void {
  fs.write(fd, buf, put, buf.length - put, position + put, (err, n) => {
    if (err) return done(err);
    if (put + n === buf.length) return done(null);
    writeFully(fd, buf, put + n, position, done);
  });
}
