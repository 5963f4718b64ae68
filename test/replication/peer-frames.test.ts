// The receiver table: the cost of a frame in work (the peer link's receive budget), and the
// shapes and legality of resync frames.
import { xxh3 } from '@node-rs/xxhash';
import { describe, expect, it } from 'vitest';
import { checkFrameHeader, checkVolumeFrame, workCost } from '../../src/replication/peer-frames.js';
import { decodeHoles, encodeHoles, encodeRange, holesIntact, HOLE_RUN_SIZE, MAX_HOLE_RUNS, MAX_HOLES_RANGE, MAX_RESYNC_RANGE, PeerMsg, type FrameHeader } from '../../src/replication/peer-protocol.js';

const MiB = 1024 * 1024;
const header = (type: PeerMsg, length: number): FrameHeader => ({ type, flags: 0, length, id: 1n });
const cost = (type: PeerMsg, body: Buffer) => workCost(header(type, body.length), body);

describe('work cost of a peer frame', () => {
  it('is the body for data and control frames', () => {
    expect(cost(PeerMsg.WRITE, Buffer.alloc(24 + 4 * MiB))).toBe(24 + 4 * MiB);
    expect(cost(PeerMsg.RS_DATA, Buffer.alloc(24 + MiB))).toBe(24 + MiB);
    expect(cost(PeerMsg.FLUSH, Buffer.alloc(0))).toBe(0);
    expect(cost(PeerMsg.WRITE_ACK, Buffer.alloc(4))).toBe(4);
  });

  it('adds the range a request reads for its answer, capped at the type\'s limit', () => {
    expect(cost(PeerMsg.PEER_READ, encodeRange(0, 0, 32 * MiB))).toBe(16 + 32 * MiB);
    expect(cost(PeerMsg.RS_REQUEST, encodeRange(0, 0, MiB))).toBe(16 + MiB);
    expect(cost(PeerMsg.VERIFY_REQUEST, encodeRange(0, 0, MiB))).toBe(16 + MiB);
    expect(cost(PeerMsg.RS_CSUM_REQUEST, Buffer.concat([encodeRange(0, 0, MiB), Buffer.alloc(2048)]))).toBe(16 + 2048 + MiB);
    // A rogue's 4 GiB range costs the most the type allows (checkVolumeFrame then refuses it).
    expect(cost(PeerMsg.RS_REQUEST, encodeRange(0, 0, 2 ** 32 - 1))).toBe(16 + MAX_RESYNC_RANGE);
  });

  it('is none for the link\'s own frames: they are no volume\'s work', () => {
    for (const type of [PeerMsg.PING, PeerMsg.PONG, PeerMsg.LEAVING, PeerMsg.ERROR, PeerMsg.HELLO]) expect(cost(type, Buffer.alloc(0))).toBeUndefined();
  });
});

describe('RS_DATA shapes', () => {
  const facts = { index: 0, size: 64 * MiB, blockSize: 4096, phase: { resync: 'target' as const, peerRunsIn: true } };
  const rsData = (length: number, data: number) => Buffer.concat([encodeRange(0, MiB, length), Buffer.alloc(8), Buffer.alloc(data)]);
  it('takes the range\'s data, or none at all (the range is zeros), and nothing in between', () => {
    expect(() => checkVolumeFrame(header(PeerMsg.RS_DATA, 24 + MiB), rsData(MiB, MiB), facts)).not.toThrow();
    expect(() => checkVolumeFrame(header(PeerMsg.RS_DATA, 24), rsData(MiB, 0), facts)).not.toThrow();
    expect(() => checkVolumeFrame(header(PeerMsg.RS_DATA, 24 + 4096), rsData(MiB, 4096), facts)).toThrow(/4096 bytes of data for 1048576/);
  });
});

describe('RS_HOLES_REQUEST and RS_HOLES (a resync\'s hole walk), VERIFY_HOLES_REQUEST and VERIFY_HOLES (a verify\'s)', () => {
  const GiB = 1024 * MiB;
  const target = { index: 0, size: 64 * GiB, blockSize: 4096, phase: { resync: 'target' as const, peerRunsIn: true } };
  const source = { ...target, phase: { resync: 'source' as const, peerRunsIn: true } };
  const idle = { ...target, phase: { resync: undefined, peerRunsIn: false } };
  const check = (type: PeerMsg, body: Buffer, facts: typeof target | typeof source | typeof idle) => () => checkVolumeFrame(header(type, body.length), body, facts);
  /** An RS_HOLES body with raw (start from the range's offset, length) pairs, however wrong (and a zero digest). */
  const raw = (offset: number, length: number, runs: Array<[number, number]>) => {
    const b = Buffer.alloc(16 + 8 * runs.length + 8);
    encodeRange(0, offset, length).copy(b);
    runs.forEach(([s, n], i) => (b.writeUInt32BE(s, 16 + 8 * i), b.writeUInt32BE(n, 20 + 8 * i)));
    return b;
  };

  it('encodes holes as runs from the range\'s offset, sealed by a digest, and decodes them back', () => {
    const holes = [{ offset: 5 * GiB, length: MiB }, { offset: 5 * GiB + 3 * MiB, length: 4096 }];
    const body = encodeHoles(0, 5 * GiB, GiB, holes, xxh3.xxh64);
    expect(body.length).toBe(16 + 2 * HOLE_RUN_SIZE + 8);
    expect(decodeHoles(body)).toEqual(holes);
    expect(holesIntact(body, xxh3.xxh64)).toBe(true);
    for (const at of [5, 17, body.length - 1]) {
      const flipped = Buffer.from(body);
      flipped.writeUInt8(flipped.readUInt8(at) ^ 1, at);
      expect(holesIntact(flipped, xxh3.xxh64), `bit flipped at ${at}`).toBe(false);
    }
    expect(decodeHoles(encodeHoles(0, 0, GiB, [], xxh3.xxh64))).toEqual([]);
  });

  it('a request is up to 1 GiB, not empty, taken only by a resync source that has the runs; it costs its body', () => {
    expect(check(PeerMsg.RS_HOLES_REQUEST, encodeRange(0, 0, MAX_HOLES_RANGE), source)).not.toThrow();
    expect(check(PeerMsg.RS_HOLES_REQUEST, encodeRange(0, 0, MAX_HOLES_RANGE + 4096), source)).toThrow(/exceeds 1073741824/);
    expect(check(PeerMsg.RS_HOLES_REQUEST, encodeRange(0, 0, 0), source)).toThrow(/an empty range/);
    expect(check(PeerMsg.RS_HOLES_REQUEST, encodeRange(0, 64 * GiB - MiB, 2 * MiB), source)).toThrow(/outside the volume/);
    expect(check(PeerMsg.RS_HOLES_REQUEST, encodeRange(0, 0, MiB), idle)).toThrow(/not expected now \(only a resync source/);
    expect(check(PeerMsg.RS_HOLES_REQUEST, encodeRange(0, 0, MiB), target)).toThrow(/only a resync source/);
    expect(cost(PeerMsg.RS_HOLES_REQUEST, encodeRange(0, 0, GiB))).toBe(16);
  });

  it('an RS_ACK covers up to 1 GiB (a hole\'s grains at once), only to a resync source', () => {
    expect(check(PeerMsg.RS_ACK, encodeRange(0, 0, GiB), source)).not.toThrow();
    expect(check(PeerMsg.RS_ACK, encodeRange(0, 0, GiB + 4096), source)).toThrow(/exceeds 1073741824/);
    expect(check(PeerMsg.RS_ACK, encodeRange(0, 0, MiB), idle)).toThrow(/only a resync source/);
  });

  it('an answer\'s runs lie inside its range, in order, apart, not empty, at most 4096; only a resync target takes it', () => {
    expect(check(PeerMsg.RS_HOLES, raw(GiB, GiB, [[0, MiB], [2 * MiB, GiB - 2 * MiB]]), target)).not.toThrow();
    expect(check(PeerMsg.RS_HOLES, raw(GiB, GiB, [[0, MiB]]), idle)).toThrow(/only a resync target/);
    expect(check(PeerMsg.RS_HOLES, raw(GiB, MiB, [[0, 2 * MiB]]), target)).toThrow(/hole run 0\+2097152 outside the 1048576 bytes answered/);
    expect(check(PeerMsg.RS_HOLES, raw(GiB, GiB, [[2 * MiB, MiB], [0, MiB]]), target)).toThrow(/out of order or overlapping/);
    expect(check(PeerMsg.RS_HOLES, raw(GiB, GiB, [[0, 2 * MiB], [MiB, MiB]]), target)).toThrow(/out of order or overlapping/);
    expect(check(PeerMsg.RS_HOLES, raw(GiB, GiB, [[0, 0]]), target)).toThrow(/an empty hole run/);
    expect(check(PeerMsg.RS_HOLES, Buffer.concat([raw(GiB, GiB, []), Buffer.alloc(4)]), target)).toThrow(/4 bytes of hole runs/);
    expect(check(PeerMsg.RS_HOLES, raw(GiB, GiB, []).subarray(0, 20), target)).toThrow(/RS_HOLES for volume 0/);
    expect(check(PeerMsg.RS_HOLES, raw(GiB, 0, []), target)).toThrow(/an empty range/);
    // Too many runs: refused at the header, before the body is buffered.
    const many = raw(0, GiB, Array.from({ length: MAX_HOLE_RUNS + 1 }, (_, i): [number, number] => [i * 8192, 4096]));
    expect(() => checkFrameHeader(header(PeerMsg.RS_HOLES, many.length), 'connected')).toThrow(/RS_HOLES body of 32800 bytes/);
  });

  it('VERIFY_HOLES_REQUEST: up to 1 GiB, not empty, only outside a resync, costs its body', () => {
    expect(check(PeerMsg.VERIFY_HOLES_REQUEST, encodeRange(0, 0, MAX_HOLES_RANGE), idle)).not.toThrow();
    expect(check(PeerMsg.VERIFY_HOLES_REQUEST, encodeRange(0, 0, MAX_HOLES_RANGE + 4096), idle)).toThrow(/VERIFY_HOLES_REQUEST for volume 0: length 1073745920 exceeds 1073741824/);
    expect(check(PeerMsg.VERIFY_HOLES_REQUEST, encodeRange(0, 0, 0), idle)).toThrow(/an empty range/);
    expect(check(PeerMsg.VERIFY_HOLES_REQUEST, encodeRange(0, 64 * GiB - MiB, 2 * MiB), idle)).toThrow(/outside the volume/);
    expect(check(PeerMsg.VERIFY_HOLES_REQUEST, encodeRange(1, 0, MiB), idle)).toThrow(/the body names volume 1/);
    expect(check(PeerMsg.VERIFY_HOLES_REQUEST, encodeRange(0, 0, MiB), source)).toThrow(/not expected now \(not during a resync/);
    expect(check(PeerMsg.VERIFY_HOLES_REQUEST, encodeRange(0, 0, MiB), target)).toThrow(/not during a resync/);
    expect(() => checkFrameHeader(header(PeerMsg.VERIFY_HOLES_REQUEST, 17), 'connected')).toThrow(/VERIFY_HOLES_REQUEST body of 17 bytes/);
    expect(() => checkFrameHeader(header(PeerMsg.VERIFY_HOLES_REQUEST, 16), 'handshake')).toThrow(/VERIFY_HOLES_REQUEST before HELLO/);
    expect(cost(PeerMsg.VERIFY_HOLES_REQUEST, encodeRange(0, 0, GiB))).toBe(16);
  });

  it('VERIFY_HOLES: an RS_HOLES body, checked the same way, taken in any state (a verify may have ended)', () => {
    for (const facts of [idle, source, target]) expect(check(PeerMsg.VERIFY_HOLES, raw(GiB, GiB, [[0, MiB]]), facts)).not.toThrow();
    expect(check(PeerMsg.VERIFY_HOLES, raw(GiB, MiB, [[0, 2 * MiB]]), idle)).toThrow(/VERIFY_HOLES for volume 0: hole run 0\+2097152 outside the 1048576 bytes answered/);
    expect(check(PeerMsg.VERIFY_HOLES, raw(GiB, GiB, [[2 * MiB, MiB], [0, MiB]]), idle)).toThrow(/out of order or overlapping/);
    expect(check(PeerMsg.VERIFY_HOLES, raw(GiB, GiB, [[0, 0]]), idle)).toThrow(/an empty hole run/);
    expect(check(PeerMsg.VERIFY_HOLES, Buffer.concat([raw(GiB, GiB, []), Buffer.alloc(4)]), idle)).toThrow(/4 bytes of hole runs/);
    expect(check(PeerMsg.VERIFY_HOLES, raw(GiB, 0, []), idle)).toThrow(/an empty range/);
    expect(check(PeerMsg.VERIFY_HOLES, raw(64 * GiB - MiB, 2 * MiB, []), idle)).toThrow(/outside the volume/);
    expect(check(PeerMsg.VERIFY_HOLES, raw(0, GiB + 4096, []), idle)).toThrow(/exceeds 1073741824/);
    const many = raw(0, GiB, Array.from({ length: MAX_HOLE_RUNS + 1 }, (_, i): [number, number] => [i * 8192, 4096]));
    expect(() => checkFrameHeader(header(PeerMsg.VERIFY_HOLES, many.length), 'connected')).toThrow(/VERIFY_HOLES body of 32800 bytes/);
    expect(() => checkFrameHeader(header(PeerMsg.VERIFY_HOLES, 20), 'connected')).toThrow(/VERIFY_HOLES body of 20 bytes/);
  });
});
