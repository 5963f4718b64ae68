// The client-side reply decoder against the server's own reply builders: every reply the server
// can send decodes to what was meant, however the bytes are split; replies a request cannot
// have are protocol violations.
import { describe, expect, it } from 'vitest';
import { Cmd, NbdErr } from '../../src/protocol/constants.js';
import { ProtocolViolation } from '../../src/protocol/errors.js';
import { ReplyDecoder, type ReplySink, type ReplyTarget } from '../../src/protocol/reply-decoder.js';
import { blockStatusReply, holeChunk, readReplyHeaderSize, simpleReply, structuredDone, structuredError, writeReadReplyHeader } from '../../src/protocol/replies.js';
import type { Request } from '../../src/protocol/requests.js';

interface Seen {
  done: number[];
  errors: Array<[number, number, string]>;
  extents: Array<[number, number[]]>;
}

function decoderFor(targets: Map<number, ReplyTarget>): { d: ReplyDecoder; seen: Seen } {
  const seen: Seen = { done: [], errors: [], extents: [] };
  const sink: ReplySink = {
    request: (c) => targets.get(c),
    onExtents: (c, body) => seen.extents.push([c, Array.from({ length: (body.length - 4) / 4 }, (_, i) => body.readUInt32BE(4 + 4 * i))]),
    onError: (c, e, m) => seen.errors.push([c, e, m]),
    onDone: (c) => seen.done.push(c),
  };
  return { d: new ReplyDecoder(sink), seen };
}

const req = (cookie: number, type: number, offset: number, length: number): Request => ({ type, flags: 0, cookieHi: 0, cookieLo: cookie, offset, length });

/** A structured READ reply of `data` at `offset` as the server's sparse read sends it: data, a hole, data. */
function sparseRead(r: Request, data: Buffer): Buffer[] {
  const hs = readReplyHeaderSize(true);
  const first = Buffer.alloc(hs + 100);
  data.copy(first, hs, 0, 100);
  writeReadReplyHeader(first, true, r, r.offset, 100, false);
  const hole = holeChunk(r, r.offset + 100, 200, false);
  const last = Buffer.alloc(hs + data.length - 300);
  data.copy(last, hs, 300);
  writeReadReplyHeader(last, true, r, r.offset + 300, data.length - 300, true);
  return [first, hole, last];
}

describe('ReplyDecoder', () => {
  it('decodes every kind of reply the server sends, split at every byte', () => {
    const data = Buffer.alloc(1000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 13 + 1) & 0xff;
    data.fill(0, 100, 300);
    const r1 = req(1, Cmd.READ, 4096, 1000);
    const r2 = req(2, Cmd.WRITE, 0, 10);
    const r3 = req(3, Cmd.BLOCK_STATUS, 0, 65536);
    const r4 = req(4, Cmd.READ, 0, 8);
    const r5 = req(5, Cmd.FLUSH, 0, 0);
    const wire = Buffer.concat([
      ...sparseRead(r1, data),
      simpleReply(r2, NbdErr.OK),
      blockStatusReply(r3, 7, [4096, 61440], [0, 3], 2),
      structuredError(r4, NbdErr.EIO, 'disk on fire'),
      structuredDone(r5),
    ]);
    for (let split = 1; split < wire.length; split += 7) {
      const into = Buffer.alloc(1000, 0xee);
      const targets = new Map<number, ReplyTarget>([
        [1, { ...r1, data: into }],
        [2, { ...r2, data: undefined }],
        [3, { ...r3, data: undefined }],
        [4, { ...r4, data: Buffer.alloc(8) }],
        [5, { ...r5, data: undefined }],
      ]);
      const { d, seen } = decoderFor(targets);
      for (let at = 0; at < wire.length; at += split) d.feed(wire.subarray(at, Math.min(wire.length, at + split)));
      expect(into.equals(data), `split ${split}`).toBe(true);
      expect(seen.done).toEqual([1, 2, 3, 4, 5]);
      expect(seen.extents).toEqual([[3, [4096, 0, 61440, 3]]]);
      expect(seen.errors).toEqual([[4, NbdErr.EIO, 'disk on fire']]);
      expect(d.between).toBe(true);
    }
  });

  it('gives the rest of a large data chunk as a direct read target', () => {
    const r = req(9, Cmd.READ, 0, 256 * 1024);
    const into = Buffer.alloc(r.length);
    const { d, seen } = decoderFor(new Map([[9, { ...r, data: into }]]));
    const hs = readReplyHeaderSize(true);
    const header = Buffer.alloc(hs);
    writeReadReplyHeader(header, true, r, 0, r.length, true);
    d.feed(Buffer.concat([header, Buffer.alloc(1000, 1)]));
    const target = d.dataTarget(64 * 1024)!;
    expect(target.length).toBe(r.length - 1000);
    target.fill(2);
    d.dataArrived(target.length);
    expect(seen.done).toEqual([9]);
    expect(into[999]).toBe(1);
    expect(into[1000]).toBe(2);
    expect(d.dataTarget(1)).toBeUndefined();
  });

  it('refuses replies the requests cannot have', () => {
    const read = req(1, Cmd.READ, 4096, 100);
    const write = req(2, Cmd.WRITE, 0, 100);
    const targets = new Map<number, ReplyTarget>([
      [1, { ...read, data: Buffer.alloc(100) }],
      [2, { ...write, data: Buffer.alloc(100) }],
    ]);
    const hs = readReplyHeaderSize(true);
    const outside = Buffer.alloc(hs + 50);
    writeReadReplyHeader(outside, true, read, 4096 + 60, 50, true);
    const dataForWrite = Buffer.alloc(hs + 10);
    writeReadReplyHeader(dataForWrite, true, write, 0, 10, true);
    const bad = Buffer.from(simpleReply(read, 0));
    bad.writeUInt32BE(0xdeadbeef, 0);
    for (const wire of [simpleReply(req(77, Cmd.READ, 0, 1), 0), outside, dataForWrite, bad, holeChunk(read, 0, 10, true)]) {
      const { d } = decoderFor(targets);
      expect(() => d.feed(wire)).toThrow(ProtocolViolation);
    }
  });
});
