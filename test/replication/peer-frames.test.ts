// The receiver table's cost of a frame in work (the peer link's receive budget).
import { describe, expect, it } from 'vitest';
import { checkVolumeFrame, workCost } from '../../src/replication/peer-frames.js';
import { encodeRange, MAX_RESYNC_RANGE, PeerMsg, type FrameHeader } from '../../src/replication/peer-protocol.js';

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
