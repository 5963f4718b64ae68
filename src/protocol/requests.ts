// Transmission-phase requests: the 28-byte header, and the one place requests are validated.
import { Cmd, CmdFlag, MAX_REQUEST, NbdErr, REQUEST_MAGIC } from './constants.js';
import { ProtocolViolation } from './errors.js';

export interface Request {
  readonly flags: number;
  readonly type: number;
  /** The client's 64-bit cookie (handle), kept as two 32-bit halves: it is only echoed back. */
  readonly cookieHi: number;
  readonly cookieLo: number;
  /** Byte offset; values past 2^53 lose precision but are far past any export's end. */
  readonly offset: number;
  readonly length: number;
}

/** Decodes a request header at `off`; a bad magic is a protocol violation (drop the connection). */
export function decodeRequestHeader(b: Buffer, off: number): Request {
  const magic = b.readUInt32BE(off);
  if (magic !== REQUEST_MAGIC) throw new ProtocolViolation(`bad request magic 0x${magic.toString(16)}`);
  return {
    flags: b.readUInt16BE(off + 4),
    type: b.readUInt16BE(off + 6),
    cookieHi: b.readUInt32BE(off + 8),
    cookieLo: b.readUInt32BE(off + 12),
    offset: b.readUInt32BE(off + 16) * 4294967296 + b.readUInt32BE(off + 20),
    length: b.readUInt32BE(off + 24),
  };
}

/** Encodes a request header (used by test clients and, later, the peer link). */
export function encodeRequestHeader(b: Buffer, off: number, r: Request): void {
  b.writeUInt32BE(REQUEST_MAGIC, off);
  b.writeUInt16BE(r.flags, off + 4);
  b.writeUInt16BE(r.type, off + 6);
  b.writeUInt32BE(r.cookieHi, off + 8);
  b.writeUInt32BE(r.cookieLo, off + 12);
  b.writeUInt32BE(Math.floor(r.offset / 4294967296), off + 16);
  b.writeUInt32BE(r.offset >>> 0, off + 20);
  b.writeUInt32BE(r.length, off + 24);
}

/** What validation needs to know about the negotiated export. */
export interface TransmissionContext {
  readonly size: number;
  readonly readOnly: boolean;
  readonly structuredReplies: boolean;
  readonly baseAllocation: boolean;
  /** The export advertised NBD_FLAG_SEND_FAST_ZERO. */
  readonly fastZero: boolean;
}

/** Flags each command accepts (DF additionally needs structured replies). */
const allowedFlags: Record<number, number> = {
  [Cmd.READ]: CmdFlag.DF,
  [Cmd.WRITE]: CmdFlag.FUA,
  [Cmd.DISC]: 0,
  [Cmd.FLUSH]: 0,
  [Cmd.TRIM]: CmdFlag.FUA,
  [Cmd.CACHE]: 0,
  [Cmd.WRITE_ZEROES]: CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO,
  [Cmd.BLOCK_STATUS]: CmdFlag.REQ_ONE,
};

/**
 * The NBD error a request must be refused with, or OK. Inner layers can then trust the request.
 * Order follows nbdkit's validate_request: command, flags, permission, then range and size.
 */
export function validateRequest(r: Request, ctx: TransmissionContext): NbdErr {
  const allowed = allowedFlags[r.type];
  if (allowed === undefined) return NbdErr.EINVAL;
  if ((r.flags & ~allowed) !== 0) return NbdErr.EINVAL;
  if ((r.flags & CmdFlag.DF) !== 0 && !ctx.structuredReplies) return NbdErr.EINVAL;
  if ((r.flags & CmdFlag.FAST_ZERO) !== 0 && !ctx.fastZero) return NbdErr.EINVAL; // a flag not advertised
  const writes = r.type === Cmd.WRITE || r.type === Cmd.TRIM || r.type === Cmd.WRITE_ZEROES;
  if (writes && ctx.readOnly) return NbdErr.EPERM;
  switch (r.type) {
    case Cmd.DISC:
      return NbdErr.OK;
    case Cmd.FLUSH:
      return r.offset === 0 && r.length === 0 ? NbdErr.OK : NbdErr.EINVAL;
    case Cmd.BLOCK_STATUS:
      if (!ctx.baseAllocation) return NbdErr.EINVAL;
      break;
    case Cmd.READ:
      if (r.length > MAX_REQUEST) return (r.flags & CmdFlag.DF) !== 0 ? NbdErr.EOVERFLOW : NbdErr.EINVAL;
      break;
    case Cmd.WRITE:
      if (r.length > MAX_REQUEST) return NbdErr.EINVAL;
      break;
  }
  if (r.length === 0) return NbdErr.EINVAL;
  if (r.offset + r.length > ctx.size) {
    return r.type === Cmd.WRITE || r.type === Cmd.WRITE_ZEROES ? NbdErr.ENOSPC : NbdErr.EINVAL;
  }
  return NbdErr.OK;
}
