// Turning causes into NBD wire error codes, in one place (the real cause is logged by the caller).
import { NbdErr } from './constants.js';

const byCode: Record<string, NbdErr> = {
  EPERM: NbdErr.EPERM,
  EACCES: NbdErr.EPERM,
  EROFS: NbdErr.EPERM,
  EIO: NbdErr.EIO,
  ENOMEM: NbdErr.ENOMEM,
  EINVAL: NbdErr.EINVAL,
  ENOSPC: NbdErr.ENOSPC,
  EDQUOT: NbdErr.ENOSPC,
  EFBIG: NbdErr.ENOSPC,
  EOVERFLOW: NbdErr.EOVERFLOW,
  ENOTSUP: NbdErr.ENOTSUP,
  EOPNOTSUPP: NbdErr.ENOTSUP,
  ESHUTDOWN: NbdErr.ESHUTDOWN,
};

/**
 * The NBD error for a thrown error: its `code` when the spec has one for it, else its `osCode`
 * (the disk errno an engine error keeps, see replication/mirror-errors.ts), else EIO.
 */
export function nbdErrno(err: unknown): NbdErr {
  const e = err as { code?: unknown; osCode?: unknown } | null;
  for (const code of [e?.code, e?.osCode]) if (typeof code === 'string' && byCode[code]) return byCode[code];
  return NbdErr.EIO;
}

const names: Record<number, string> = {
  [NbdErr.OK]: 'OK',
  [NbdErr.EPERM]: 'EPERM',
  [NbdErr.EIO]: 'EIO',
  [NbdErr.ENOMEM]: 'ENOMEM',
  [NbdErr.EINVAL]: 'EINVAL',
  [NbdErr.ENOSPC]: 'ENOSPC',
  [NbdErr.EOVERFLOW]: 'EOVERFLOW',
  [NbdErr.ENOTSUP]: 'ENOTSUP',
  [NbdErr.ESHUTDOWN]: 'ESHUTDOWN',
};

export function nbdErrName(err: number): string {
  return names[err] ?? `E#${err}`;
}

/** An error carrying the NBD code it must be reported with (e.g. ENOTSUP for a slow FAST_ZERO). */
export class NbdError extends Error {
  constructor(
    readonly nbdCode: NbdErr,
    message: string,
  ) {
    super(message);
    this.name = 'NbdError';
  }
  get code(): string {
    return nbdErrName(this.nbdCode);
  }
}

/** A violation of the wire protocol severe enough that the connection must be dropped. */
export class ProtocolViolation extends Error {
  readonly code = 'NBD_PROTOCOL_VIOLATION';
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolViolation';
  }
}
