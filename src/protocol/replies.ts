// Transmission-phase replies: simple and structured, encoded into caller-provided buffers where
// the payload is large (READ) so data is never copied after it is read.
import {
  Chunk,
  NbdErr,
  ReplyFlag,
  SIMPLE_REPLY_HEADER_SIZE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './constants.js';
import type { Request } from './requests.js';

export function writeSimpleReplyHeader(b: Buffer, off: number, err: NbdErr, r: Request): void {
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, off);
  b.writeUInt32BE(err, off + 4);
  b.writeUInt32BE(r.cookieHi, off + 8);
  b.writeUInt32BE(r.cookieLo, off + 12);
}

export function writeChunkHeader(b: Buffer, off: number, flags: number, type: Chunk, r: Request, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, off);
  b.writeUInt16BE(flags, off + 4);
  b.writeUInt16BE(type, off + 6);
  b.writeUInt32BE(r.cookieHi, off + 8);
  b.writeUInt32BE(r.cookieLo, off + 12);
  b.writeUInt32BE(length, off + 16);
}

/** A simple reply with no payload: every non-READ command, and errors without structured replies. */
export function simpleReply(r: Request, err: NbdErr): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_SIZE);
  writeSimpleReplyHeader(b, 0, err, r);
  return b;
}

/** The final chunk of a structured reply whose data chunks were already sent. */
export function structuredDone(r: Request): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE);
  writeChunkHeader(b, 0, ReplyFlag.DONE, Chunk.NONE, r, 0);
  return b;
}

/** A structured NBD_REPLY_TYPE_ERROR chunk ending the reply, with a human-readable message. */
export function structuredError(r: Request, err: NbdErr, message: string): Buffer {
  const msg = Buffer.from(message.slice(0, 1024), 'utf8');
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 6 + msg.length);
  writeChunkHeader(b, 0, ReplyFlag.DONE, Chunk.ERROR, r, 6 + msg.length);
  b.writeUInt32BE(err, 20);
  b.writeUInt16BE(msg.length, 24);
  msg.copy(b, 26);
  return b;
}

/** Bytes before the data in a READ reply: simple header, or chunk header plus 64-bit offset. */
export function readReplyHeaderSize(structured: boolean): number {
  return structured ? STRUCTURED_REPLY_HEADER_SIZE + 8 : SIMPLE_REPLY_HEADER_SIZE;
}

/**
 * Fills in the header of a READ reply whose `length` data bytes already sit after the header
 * in `b` (see readReplyHeaderSize). A structured one is a single OFFSET_DATA chunk at `offset`.
 */
export function writeReadReplyHeader(b: Buffer, structured: boolean, r: Request, offset: number, length: number, last: boolean): void {
  if (!structured) {
    writeSimpleReplyHeader(b, 0, NbdErr.OK, r);
    return;
  }
  writeChunkHeader(b, 0, last ? ReplyFlag.DONE : 0, Chunk.OFFSET_DATA, r, 8 + length);
  writeOffset(b, 20, offset);
}

/** An OFFSET_HOLE chunk: `length` bytes of zeroes at `offset`, sent without data. */
export function holeChunk(r: Request, offset: number, length: number, last: boolean): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 12);
  writeChunkHeader(b, 0, last ? ReplyFlag.DONE : 0, Chunk.OFFSET_HOLE, r, 12);
  writeOffset(b, 20, offset);
  b.writeUInt32BE(length, 28);
  return b;
}

/** A BLOCK_STATUS chunk (final) for one metadata context: `count` (length, flags) descriptors. */
export function blockStatusReply(r: Request, contextId: number, lengths: ArrayLike<number>, flags: ArrayLike<number>, count: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 4 + 8 * count);
  writeChunkHeader(b, 0, ReplyFlag.DONE, Chunk.BLOCK_STATUS, r, 4 + 8 * count);
  b.writeUInt32BE(contextId, 20);
  for (let i = 0; i < count; i++) {
    b.writeUInt32BE(lengths[i]!, 24 + 8 * i);
    b.writeUInt32BE(flags[i]!, 28 + 8 * i);
  }
  return b;
}

function writeOffset(b: Buffer, at: number, offset: number): void {
  b.writeUInt32BE(Math.floor(offset / 4294967296), at);
  b.writeUInt32BE(offset >>> 0, at + 4);
}
