// What stands in for a volume's local disk once it failed (DRBD's "detach"): it stores nothing.
// Changes that reach it are only marked out of sync here (best effort: the metadata may sit on
// the same failed disk; the peer marks them too, and its bits are the ones that count); reads
// and flushes fail, so a caller that still asks gets the failure rather than old data or a
// durability that is not there. Reads of a Failed
// volume go to the peer before they get here (mirrored-volume.ts).
import type { Done, Extent, Volume, VolumeCapabilities, ZeroOptions } from '../volume/volume.js';
import { MirrorCode, MirrorError, errnoName } from './mirror-errors.js';

export class DetachedDisk implements Volume {
  constructor(
    readonly size: number,
    readonly capabilities: VolumeCapabilities,
    /** Why the disk was given up: reads fail with it. */
    private readonly cause: Error,
    private readonly markOutOfSync: (offset: number, length: number) => void,
  ) {}

  read(_buf: Buffer, _offset: number, done: Done): void {
    done(new MirrorError(MirrorCode.LOCAL_FAILED, `the local disk failed (${this.cause.message})`, errnoName(this.cause)));
  }

  write(buf: Buffer, offset: number, _fua: boolean, done: Done): void {
    this.markOutOfSync(offset, buf.length);
    done(null);
  }

  trim(offset: number, length: number, _fua: boolean, done: Done): void {
    this.markOutOfSync(offset, length);
    done(null);
  }

  zero(offset: number, length: number, _opts: ZeroOptions, done: Done): void {
    this.markOutOfSync(offset, length);
    done(null);
  }

  /**
   * Fails: nothing here is durable, and a caller that counted on it would lose track of data the
   * disk held unflushed when it failed — a peer's transfer log or a resync checkpoint clearing
   * bits (found by the power-cut chaos: a cut after the disk failed lost a write no bit named).
   * A client's flush still succeeds through the peer (mirrored-write.ts flush).
   */
  flush(done: Done): void {
    done(new MirrorError(MirrorCode.LOCAL_FAILED, `the local disk failed (${this.cause.message}): nothing is made durable here`, errnoName(this.cause)));
  }

  cache(_offset: number, _length: number, done: Done): void {
    done(null);
  }

  extents(_offset: number, length: number, _max: number, done: (err: Error | null, extents: Extent[]) => void): void {
    done(null, [{ length, flags: 0 }]);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
