// The one interface every storage layer implements (raw file now; thin pool and the mirrored
// volume later wrap or replace it). Callback style: no promise per request on the hot path.
// Requests reaching a Volume are already validated (in range, allowed flags): layers only assert.

export type Done = (err: Error | null) => void;

/** One run of base:allocation status. `flags` are NBD_STATE_* bits (HOLE, ZERO). */
export interface Extent {
  length: number;
  flags: number;
}

export interface ZeroOptions {
  /** The range must stay allocated (NBD_CMD_FLAG_NO_HOLE). */
  readonly noHole: boolean;
  /** Fail with ENOTSUP rather than write zeroes slowly (NBD_CMD_FLAG_FAST_ZERO). */
  readonly fastZero: boolean;
  readonly fua: boolean;
}

/**
 * What a layer can do, asked once per export and turned into NBD transmission flags.
 * Durability contract, as nbdkit documents it per plugin:
 *   flush     — when `flush` completes, every write completed before it (on any connection) is on stable storage
 *   fua       — a write with `fua` completes only once it is on stable storage
 *   multiConn — all connections share one cache, so a flush on one covers writes completed on all
 */
export interface VolumeCapabilities {
  readonly readOnly: boolean;
  readonly flush: boolean;
  readonly fua: boolean;
  readonly trim: boolean;
  readonly zero: boolean;
  readonly fastZero: boolean;
  readonly cache: boolean;
  readonly multiConn: boolean;
}

/** Units a thin volume promised to one write (see Volume.reserve); given back once it is done. */
export interface Reservation {
  release(): void;
}

export interface Volume {
  readonly size: number;
  readonly capabilities: VolumeCapabilities;
  /** Fills all of `buf` from `offset`. */
  read(buf: Buffer, offset: number, done: Done): void;
  /**
   * Optional zero-copy read: a view of the current contents of [offset, offset + length), or
   * undefined when the layer cannot give one for this range (then use `read`). The view shows
   * later writes too, so it must be sent at once (as a READ reply is).
   */
  view?(offset: number, length: number): Buffer | undefined;
  write(buf: Buffer, offset: number, fua: boolean, done: Done): void;
  flush(done: Done): void;
  /** Advisory: the range may read back as anything afterwards (we return zeroes). */
  trim(offset: number, length: number, fua: boolean, done: Done): void;
  zero(offset: number, length: number, opts: ZeroOptions, done: Done): void;
  /**
   * False once this layer has found it cannot zero quickly (so a FAST_ZERO request would fail
   * with ENOTSUP): lets an upper layer refuse one before anything changes anywhere.
   */
  zeroesFast?(): boolean;
  /**
   * Thin volumes: promises the space a write of `buf` at `offset` will need, so that write cannot
   * then fail with ENOSPC. Null when it needs none, an ENOSPC error when the space is not free.
   * A mirrored write reserves before it sends to the peer (both nodes allocate or both fail).
   */
  reserve?(buf: Buffer, offset: number): Reservation | Error | null;
  /**
   * Thin volumes: calls back once a write of `buf` at `offset` would find its units free — at
   * once, or (a pool set to hold writes) when space appears; ENOSPC if it does not in time.
   * Not binding: `reserve` still decides. A mirrored write waits here before it takes its place.
   */
  waitForSpace?(buf: Buffer, offset: number, done: Done): void;
  /** Advisory prefetch. */
  cache(offset: number, length: number, done: Done): void;
  /** Allocation status from `offset`, at most `max` extents, covering at most `length` bytes. */
  extents(offset: number, length: number, max: number, done: (err: Error | null, extents: Extent[]) => void): void;
  close(): Promise<void>;
}
