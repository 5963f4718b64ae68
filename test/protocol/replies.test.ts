import { describe, expect, it } from 'vitest';
import { Chunk, NbdErr, ReplyFlag, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from '../../src/protocol/constants.js';
import {
  blockStatusReply,
  holeChunk,
  readReplyHeaderSize,
  simpleReply,
  structuredDone,
  structuredError,
  writeReadReplyHeader,
} from '../../src/protocol/replies.js';
import type { Request } from '../../src/protocol/requests.js';

const r: Request = { type: 0, flags: 0, cookieHi: 0x01020304, cookieLo: 0x05060708, offset: 2 ** 33 + 7, length: 4 };

function chunkHeader(b: Buffer) {
  expect(b.readUInt32BE(0)).toBe(STRUCTURED_REPLY_MAGIC);
  expect(b.readUInt32BE(8)).toBe(r.cookieHi);
  expect(b.readUInt32BE(12)).toBe(r.cookieLo);
  expect(b.readUInt32BE(16)).toBe(b.length - 20);
  return { flags: b.readUInt16BE(4), type: b.readUInt16BE(6) };
}

describe('replies', () => {
  it('simple reply carries magic, error and cookie', () => {
    const b = simpleReply(r, NbdErr.ENOSPC);
    expect(b.length).toBe(16);
    expect([b.readUInt32BE(0), b.readUInt32BE(4), b.readUInt32BE(8), b.readUInt32BE(12)]).toEqual([SIMPLE_REPLY_MAGIC, 28, r.cookieHi, r.cookieLo]);
  });

  it('read reply headers leave the data in place', () => {
    for (const structured of [false, true]) {
      const hs = readReplyHeaderSize(structured);
      const b = Buffer.alloc(hs + 4);
      b.write('data', hs);
      writeReadReplyHeader(b, structured, r, r.offset, 4, true);
      expect(b.toString('utf8', hs)).toBe('data');
      if (structured) {
        expect(chunkHeader(b)).toEqual({ flags: ReplyFlag.DONE, type: Chunk.OFFSET_DATA });
        expect(b.readBigUInt64BE(20)).toBe(BigInt(r.offset));
      } else {
        expect(b.readUInt32BE(0)).toBe(SIMPLE_REPLY_MAGIC);
      }
    }
  });

  it('hole chunk, done chunk and error chunk', () => {
    const h = holeChunk(r, r.offset, 65536, false);
    expect(chunkHeader(h)).toEqual({ flags: 0, type: Chunk.OFFSET_HOLE });
    expect([h.readBigUInt64BE(20), h.readUInt32BE(28)]).toEqual([BigInt(r.offset), 65536]);
    expect(chunkHeader(structuredDone(r))).toEqual({ flags: ReplyFlag.DONE, type: Chunk.NONE });
    const e = structuredError(r, NbdErr.EIO, 'disk on fire');
    expect(chunkHeader(e)).toEqual({ flags: ReplyFlag.DONE, type: Chunk.ERROR });
    expect(e.readUInt32BE(20)).toBe(NbdErr.EIO);
    expect(e.toString('utf8', 26, 26 + e.readUInt16BE(24))).toBe('disk on fire');
  });

  it('block status chunk lists (length, flags) pairs for the context', () => {
    const b = blockStatusReply(r, 1, [4096, 8192], [0, 3], 2);
    expect(chunkHeader(b)).toEqual({ flags: ReplyFlag.DONE, type: Chunk.BLOCK_STATUS });
    expect([b.readUInt32BE(20), b.readUInt32BE(24), b.readUInt32BE(28), b.readUInt32BE(32), b.readUInt32BE(36)]).toEqual([1, 4096, 0, 8192, 3]);
  });
});
