import { describe, expect, it } from 'vitest';
import { ProtocolViolation } from '../../src/protocol/errors.js';
import {
  decodeWriteHeader,
  encodeFrame,
  encodeFrameHeader,
  encodeWriteHeader,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  MAX_FRAME_BODY,
  PeerMsg,
  type FrameHeader,
} from '../../src/replication/peer-protocol.js';

function collect() {
  const frames: Array<{ header: FrameHeader; body: Buffer }> = [];
  const decoder = new FrameDecoder({ allocBody: (n) => Buffer.alloc(n), onFrame: (header, body) => frames.push({ header, body }) });
  return { frames, decoder };
}

function stream(): Buffer {
  const data = Buffer.from('block data '.repeat(100));
  const wh = encodeWriteHeader({ volume: 3, flags: 1, offset: 2 ** 40 + 4096, digest: 0xfedcba9876543210n });
  return Buffer.concat([
    encodeFrame(PeerMsg.PING, 1n),
    encodeFrameHeader(PeerMsg.WRITE, 2n, wh.length + data.length),
    wh,
    data,
    encodeFrame(PeerMsg.WRITE_ACK, 2n, Buffer.from([0, 0, 0, 0])),
  ]);
}

function check(frames: ReturnType<typeof collect>['frames']): void {
  expect(frames.map((f) => [f.header.type, f.header.id, f.body.length])).toEqual([
    [PeerMsg.PING, 1n, 0],
    [PeerMsg.WRITE, 2n, 24 + 1100],
    [PeerMsg.WRITE_ACK, 2n, 4],
  ]);
  expect(decodeWriteHeader(frames[1]!.body)).toEqual({ volume: 3, flags: 1, offset: 2 ** 40 + 4096, digest: 0xfedcba9876543210n });
  expect(frames[1]!.body.toString('utf8', 24)).toBe('block data '.repeat(100));
}

describe('peer frames', () => {
  it('decode from one chunk, from every split point, and byte by byte', () => {
    const s = stream();
    const one = collect();
    one.decoder.feed(s);
    check(one.frames);
    for (let cut = 1; cut < s.length; cut += 7) {
      const c = collect();
      c.decoder.feed(s.subarray(0, cut));
      c.decoder.feed(s.subarray(cut));
      check(c.frames);
    }
    const b = collect();
    for (let i = 0; i < s.length; i++) b.decoder.feed(s.subarray(i, i + 1));
    check(b.frames);
  });

  it('a bad magic or an oversize body is a protocol violation (the link drops, no data is touched)', () => {
    const bad = encodeFrame(PeerMsg.PING, 1n);
    bad.writeUInt32BE(0xdeadbeef, 0);
    expect(() => collect().decoder.feed(bad)).toThrow(ProtocolViolation);
    const huge = encodeFrameHeader(PeerMsg.WRITE, 1n, MAX_FRAME_BODY + 1);
    const c = collect();
    expect(() => c.decoder.feed(huge)).toThrow(/exceeds/);
    expect(c.frames).toHaveLength(0);
  });

  it('a WRITE body shorter than its header is refused', () => {
    expect(() => decodeWriteHeader(Buffer.alloc(10))).toThrow(ProtocolViolation);
  });

  it('headers are 20 bytes', () => {
    expect(encodeFrameHeader(PeerMsg.FLUSH, 9n, 0).length).toBe(FRAME_HEADER_SIZE);
  });

  it('holds a frame at its header, allocating nothing and keeping later bytes, until resumed; then delivers every frame in order', () => {
    const s = stream();
    // Chunks are views of one reused buffer, overwritten after each feed (as the receive buffer is).
    const scratch = Buffer.alloc(s.length);
    for (let cut = 1; cut < s.length; cut += 5) {
      const frames: Array<{ header: FrameHeader; body: Buffer }> = [];
      const allocated: number[] = [];
      let open = false;
      const decoder = new FrameDecoder({
        hold: (h) => h.type === PeerMsg.WRITE && !open,
        allocBody: (n) => (allocated.push(n), Buffer.alloc(n)),
        onFrame: (header, body) => frames.push({ header, body }),
      });
      for (const [from, to] of [[0, cut], [cut, s.length]] as const) {
        s.copy(scratch, 0, from, to);
        decoder.feed(scratch.subarray(0, to - from));
        scratch.fill(0xee);
      }
      expect(frames.map((f) => f.header.type)).toEqual([PeerMsg.PING]);
      expect(allocated).toEqual([0]); // the held WRITE got no body
      expect(decoder.holding).toBe(true);
      decoder.resume(); // still held: nothing moves
      expect(frames).toHaveLength(1);
      open = true;
      decoder.resume();
      expect(decoder.holding).toBe(false);
      check(frames);
    }
  });

  it('hands out the rest of a large frame body for the socket to read into', () => {
    const { frames, decoder } = collect();
    const body = Buffer.alloc(300_000, 0x5a);
    expect(decoder.bodyTarget(1)).toBeUndefined();
    decoder.feed(Buffer.concat([encodeFrameHeader(PeerMsg.RS_DATA, 9n, body.length), body.subarray(0, 100)]));
    const target = decoder.bodyTarget(64 * 1024)!;
    expect(target.length).toBe(body.length - 100);
    body.copy(target, 0, 100); // a read straight into the body buffer
    decoder.bodyArrived(body.length - 100);
    expect(decoder.bodyTarget(1)).toBeUndefined();
    decoder.feed(encodeFrame(PeerMsg.PING, 10n));
    expect(frames.map((f) => [f.header.id, f.body.length, f.body.equals(f.header.id === 9n ? body : Buffer.alloc(0))])).toEqual([
      [9n, 300_000, true],
      [10n, 0, true],
    ]);
  });
});
