// Why the replication engine failed a request, as stable codes: logs, tests and (later) status
// name them, and the NBD edge turns each into the spec's errno (`nbdErrno` reads `osCode`).
// A failure that came from a disk — here or on the peer — keeps that disk's errno (ENOSPC stays
// ENOSPC for the client); the engine's own refusals are EIO, as DRBD reports them.

export const MirrorCode = {
  /** Without the peer and without the witness's grant: this node may not write (or read) alone. */
  NO_QUORUM: 'MIRROR_NO_QUORUM',
  /** A resync target asked for a range it has not copied yet while its source is gone. */
  NOT_RESYNCED: 'MIRROR_NOT_RESYNCED',
  /** An Inconsistent copy (a sync into it was cut short) takes no writes without its peer. */
  INCOMPLETE_COPY: 'MIRROR_INCOMPLETE_COPY',
  /** Held without quorum until the peer came back: applying it late could overwrite newer data. */
  HELD_TOO_LONG: 'MIRROR_HELD_TOO_LONG',
  /** The peer failed the write, flush or read (its errno is kept). */
  PEER_FAILED: 'MIRROR_PEER_FAILED',
  /** The local disk failed (its errno is kept); the peer still holds the data. */
  LOCAL_FAILED: 'MIRROR_LOCAL_FAILED',
  /** Resync or verify asked for without a connected peer, or the link was lost during one. */
  NO_PEER: 'MIRROR_NO_PEER',
  /** A resync or verify of this volume is already running. */
  BUSY: 'MIRROR_BUSY',
} as const;

export type MirrorCode = (typeof MirrorCode)[keyof typeof MirrorCode];

export class MirrorError extends Error {
  /**
   * @param osCode the errno name a client is told (EIO unless a disk reported another)
   */
  constructor(
    readonly code: MirrorCode,
    message: string,
    readonly osCode = 'EIO',
  ) {
    super(message);
    this.name = 'MirrorError';
  }
}

/** The errno name an error carries (a MirrorError's osCode, an fs error's code), else EIO. */
export function errnoName(err: Error): string {
  if (err instanceof MirrorError) return err.osCode;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : 'EIO';
}

/**
 * A thin pool found no free unit (its PoolFullError, ENOSPC): no disk failure. The disk stays
 * in service, the link stays up; the write fails on both nodes alike (mirrored-write.ts). An
 * ENOSPC from a raw file's filesystem is another matter: that disk fails (replication-state.ts).
 */
export function isPoolFull(err: Error): boolean {
  return (err as { poolFull?: unknown }).poolFull === true;
}
