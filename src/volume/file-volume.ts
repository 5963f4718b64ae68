// A volume stored in one raw (sparse) file. I/O mode `auto` (default) does small reads and
// writes synchronously — on a page-cached file a 4 KiB pread/pwrite takes a microsecond or two,
// far less than a thread-pool round trip — and large ones (>= 64 KiB) in libuv's thread pool, so
// copying big payloads to and from the page cache overlaps with network I/O on the event loop
// (measured in docs/BENCHMARKS.md). `sync` and `async` force one way. `mmap` writes as `auto`
// does but serves reads from a shared read-only mapping of the file: the data goes from the page
// cache straight into the socket, with no copy in between — about twice the 1 MiB read
// throughput — at a price: a disk read error then kills the process (SIGBUS) instead of failing
// one request with EIO. fdatasync always runs in the pool.
import fs from 'node:fs';
import { AllocState, MAX_PAYLOAD, NbdErr } from '../protocol/constants.js';
import { NbdError } from '../protocol/errors.js';
import { fileOps } from './fileops.js';
import { syncDirectoryOf } from '../durable.js';
import type { Done, Extent, Volume, VolumeCapabilities, ZeroOptions } from './volume.js';

export type IoMode = 'auto' | 'sync' | 'async' | 'mmap';

/** In `auto` mode, transfers of at least this many bytes go to the thread pool. */
export const ASYNC_MIN = 64 * 1024;

export interface FileVolumeOptions {
  /** Size for a file that does not exist yet (created sparse). Without it a missing file is an error. */
  readonly createSize?: number;
  readonly readOnly?: boolean;
  readonly io?: IoMode;
}

/** `mmap` mode maps the file in windows of this size, each overlapping the next by MAX_PAYLOAD
 * so every request that starts in a window also ends in it. */
const MAP_WINDOW = 2 ** 30;

/** Chunk for writing zeroes by hand and for CACHE reads. */
const CHUNK = 1024 * 1024;
let zeroChunk: Buffer | undefined;

export class FileVolume implements Volume {
  readonly capabilities: VolumeCapabilities;
  private closed = false;
  /** fallocate could not zero a range here (the filesystem lacks the modes): zeroing is slow. */
  private cannotZeroFast = false;
  /** `mmap` mode: window i maps [i * MAP_WINDOW, (i + 1) * MAP_WINDOW + MAX_PAYLOAD), made on first use. */
  private readonly windows: Array<Buffer | undefined> = [];

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private bytes: number,
    readOnly: boolean,
    private readonly io: IoMode,
  ) {
    this.capabilities = {
      readOnly,
      flush: true,
      fua: !readOnly,
      trim: !readOnly,
      zero: !readOnly,
      fastZero: !readOnly,
      cache: true,
      // One fd shared by every connection: the kernel page cache is the only cache.
      multiConn: true,
    };
  }

  get size(): number {
    return this.bytes;
  }

  /**
   * Grows the file to `size` bytes while it is served (an online resize; the new range reads as
   * zeroes), durably. Mappings are made afresh: the last one ended at the old size.
   */
  grow(size: number): void {
    if (size <= this.bytes) return;
    fs.ftruncateSync(this.fd, size);
    fs.fsyncSync(this.fd);
    this.bytes = size;
    this.windows.length = 0;
  }

  /** Opens `path`, creating it sparse when missing and `createSize` is given. */
  static open(path: string, opts: FileVolumeOptions = {}): FileVolume {
    const readOnly = opts.readOnly ?? false;
    let fd: number;
    try {
      fd = fs.openSync(path, readOnly ? 'r' : 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (opts.createSize === undefined) {
        throw new Error(`${path} does not exist; give --size to create it`, { cause: err });
      }
      fd = fs.openSync(path, 'w+');
      fs.ftruncateSync(fd, opts.createSize);
      // Its size and its directory entry durable before anything is acknowledged on it.
      fs.fsyncSync(fd);
      syncDirectoryOf(path);
      if (readOnly) {
        fs.closeSync(fd);
        fd = fs.openSync(path, 'r');
      }
    }
    const st = fs.fstatSync(fd);
    if (!st.isFile()) {
      fs.closeSync(fd);
      throw new Error(`${path} is not a regular file`);
    }
    return new FileVolume(path, fd, st.size, readOnly, opts.io ?? 'auto');
  }

  read(buf: Buffer, offset: number, done: Done): void {
    if (this.useAsync(buf.length)) return this.readAsync(buf, 0, offset, done);
    try {
      for (let got = 0; got < buf.length; ) {
        const n = fs.readSync(this.fd, buf, got, buf.length - got, offset + got);
        if (n === 0) {
          buf.fill(0, got); // past EOF of a file shorter than the export: zeroes
          break;
        }
        got += n;
      }
    } catch (err) {
      return done(err as Error);
    }
    done(null);
  }

  private useAsync(length: number): boolean {
    return this.io === 'async' || ((this.io === 'auto' || this.io === 'mmap') && length >= ASYNC_MIN);
  }

  view(offset: number, length: number): Buffer | undefined {
    if (this.io !== 'mmap' || this.closed || length > MAX_PAYLOAD) return undefined;
    const w = Math.floor(offset / MAP_WINDOW);
    let window = this.windows[w];
    if (!window) {
      const start = w * MAP_WINDOW;
      const len = Math.min(MAP_WINDOW + MAX_PAYLOAD, this.size - start);
      window = this.windows[w] = Buffer.from(fileOps.mapShared(this.fd, start, len));
    }
    const at = offset - w * MAP_WINDOW;
    return window.subarray(at, at + length);
  }

  private readAsync(buf: Buffer, got: number, offset: number, done: Done): void {
    fs.read(this.fd, buf, got, buf.length - got, offset + got, (err, n) => {
      if (err) return done(err);
      if (n === 0) buf.fill(0, got);
      if (n === 0 || got + n === buf.length) return done(null);
      this.readAsync(buf, got + n, offset, done);
    });
  }

  write(buf: Buffer, offset: number, fua: boolean, done: Done): void {
    const finish: Done = fua ? (err) => (err ? done(err) : this.flush(done)) : done;
    if (this.useAsync(buf.length)) return this.writeAsync(buf, 0, offset, finish);
    try {
      this.writeSync(buf, offset);
    } catch (err) {
      return done(err as Error);
    }
    finish(null);
  }

  private writeSync(buf: Buffer, offset: number): void {
    for (let put = 0; put < buf.length; ) put += fs.writeSync(this.fd, buf, put, buf.length - put, offset + put);
  }

  private writeAsync(buf: Buffer, put: number, offset: number, done: Done): void {
    fs.write(this.fd, buf, put, buf.length - put, offset + put, (err, n) => {
      if (err) return done(err);
      if (put + n === buf.length) return done(null);
      this.writeAsync(buf, put + n, offset, done);
    });
  }

  flush(done: Done): void {
    fs.fdatasync(this.fd, done);
  }

  trim(offset: number, length: number, fua: boolean, done: Done): void {
    try {
      fileOps.punchHole(this.fd, offset, length);
    } catch (err) {
      // Trim is advisory: a filesystem that cannot punch holes simply keeps the data.
      if ((err as NodeJS.ErrnoException).code !== 'EOPNOTSUPP') return done(err as Error);
    }
    if (fua) this.flush(done);
    else done(null);
  }

  zeroesFast(): boolean {
    return !this.cannotZeroFast;
  }

  zero(offset: number, length: number, opts: ZeroOptions, done: Done): void {
    try {
      if (!this.zeroFast(offset, length, opts.noHole)) {
        this.cannotZeroFast = true;
        if (opts.fastZero) return done(new NbdError(NbdErr.ENOTSUP, 'this filesystem cannot zero quickly'));
        // Rare fallback (filesystems without fallocate modes): plain writes of zeroes.
        zeroChunk ??= Buffer.alloc(CHUNK);
        for (let pos = offset, end = offset + length; pos < end; pos += CHUNK) {
          this.writeSync(zeroChunk.subarray(0, Math.min(CHUNK, end - pos)), pos);
        }
      }
    } catch (err) {
      return done(err as Error);
    }
    if (opts.fua) this.flush(done);
    else done(null);
  }

  /** Zeroes with fallocate: a hole when allowed, else an allocated zero range. False if unsupported. */
  private zeroFast(offset: number, length: number, noHole: boolean): boolean {
    const attempts = noHole ? [fileOps.zeroRange] : [fileOps.punchHole, fileOps.zeroRange];
    for (const call of attempts) {
      try {
        call(this.fd, offset, length);
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EOPNOTSUPP') throw err;
      }
    }
    return false;
  }

  cache(offset: number, length: number, done: Done): void {
    // A hint to the kernel, read ahead in the background: no buffer, no wait (nbdkit's file
    // plugin does the same). A failed hint is no error for the client: CACHE is advisory.
    fileOps.willNeed(this.fd, offset, length);
    done(null);
  }

  extents(offset: number, length: number, max: number, done: (err: Error | null, extents: Extent[]) => void): void {
    const out: Extent[] = [];
    const end = offset + length;
    try {
      for (let pos = offset; pos < end && out.length < max; ) {
        const data = fileOps.seekData(this.fd, pos);
        if (data === -1 || data >= end) {
          out.push({ length: end - pos, flags: AllocState.HOLE | AllocState.ZERO });
          break;
        }
        if (data > pos) {
          out.push({ length: data - pos, flags: AllocState.HOLE | AllocState.ZERO });
          pos = data;
          continue;
        }
        const hole = Math.min(fileOps.seekHole(this.fd, pos), end);
        out.push({ length: hole - pos, flags: AllocState.DATA });
        pos = hole;
      }
    } catch (err) {
      return done(err as Error, []);
    }
    done(null, out);
  }

  /** Bytes of the file that hold data (not holes), for status: a SEEK_DATA/SEEK_HOLE walk. */
  allocatedBytes(): number {
    let total = 0;
    for (let pos = 0; pos < this.size; ) {
      const data = fileOps.seekData(this.fd, pos);
      if (data < 0 || data >= this.size) break;
      const hole = Math.min(fileOps.seekHole(this.fd, data), this.size);
      total += hole - data;
      pos = hole;
    }
    return total;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.windows.length = 0; // the mappings go when the garbage collector frees them
    if (!this.capabilities.readOnly) await new Promise<void>((resolve, reject) => this.flush((err) => (err ? reject(err) : resolve())));
    fs.closeSync(this.fd);
  }
}
