// VOLUME_OP and its answer: the codec refuses every malformed body (a violation), the frame
// table bounds their size and the link phase, and the coordinator refuses a change while the
// link is down or another change runs, and applies one only after the peer did.
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import { ProtocolViolation } from '../../src/protocol/errors.js';
import { checkFrameHeader, MAX_VOLUME_OP } from '../../src/replication/peer-frames.js';
import { PeerMsg } from '../../src/replication/peer-protocol.js';
import { decodeOpAck, decodeVolumeOp, encodeOpAck, encodeVolumeOp, parseVolumeOp, VolumeOps, type VolumeOp, type VolumeOpsPort } from '../../src/replication/volume-ops.js';

const gen = '0123456789abcdef';
const body = (o: unknown) => Buffer.from(JSON.stringify(o));

describe('VOLUME_OP codec', () => {
  it('round-trips a create, a resize and a delete', () => {
    for (const op of [
      { op: 'create', name: 'vm-disk.1', size: 4096 * 10, force: false, generation: gen },
      { op: 'resize', name: 'v', size: 2 ** 40, force: false },
      { op: 'delete', name: 'v', force: true },
      { op: 'delete', name: 'v', force: false },
    ] as VolumeOp[]) {
      expect(decodeVolumeOp(encodeVolumeOp(op))).toEqual(op);
    }
  });

  it('refuses malformed bodies as protocol violations', () => {
    const bad: unknown[] = [
      'not json',
      null,
      [],
      { op: 'create', name: '../x', size: 4096, generation: gen },
      { op: 'create', name: 'a/b', size: 4096, generation: gen },
      { op: 'create', name: '', size: 4096, generation: gen },
      { op: 'create', name: 'x'.repeat(65), size: 4096, generation: gen },
      { op: 'create', name: 'v', size: 0, generation: gen },
      { op: 'create', name: 'v', size: 4097, generation: gen },
      { op: 'create', name: 'v', size: 2 ** 60, generation: gen },
      { op: 'create', name: 'v', size: 1.5, generation: gen },
      { op: 'create', name: 'v', size: '4096', generation: gen },
      { op: 'create', name: 'v', size: 4096 },
      { op: 'create', name: 'v', size: 4096, generation: 'xyz' },
      { op: 'resize', name: 'v', size: 4096, generation: gen },
      { op: 'resize', name: 'v' },
      { op: 'delete', name: 'v', size: 4096 },
      { op: 'resize', name: 'v', size: 8192, force: true },
      { op: 'shrink', name: 'v', size: 4096 },
      { op: 'delete', name: 'v', extra: true },
    ];
    for (const b of bad) expect(() => decodeVolumeOp(typeof b === 'string' ? Buffer.from(b) : body(b)), JSON.stringify(b)).toThrow(ProtocolViolation);
  });

  it('answers carry a status and a reason; other statuses are violations', () => {
    expect(decodeOpAck(encodeOpAck(undefined))).toEqual({ refusal: undefined });
    expect(decodeOpAck(encodeOpAck('volume v exists on b'))).toEqual({ refusal: 'volume v exists on b' });
    expect(encodeOpAck('x'.repeat(5000)).length).toBe(4 + MAX_VOLUME_OP);
    expect(() => decodeOpAck(Buffer.from([0, 0, 0, 2]))).toThrow(ProtocolViolation);
  });

  it('the frame table bounds both frames and allows them only on a linked link', () => {
    const h = (type: PeerMsg, length: number) => ({ type, flags: 0, length, id: 1n });
    expect(() => checkFrameHeader(h(PeerMsg.VOLUME_OP, 100), 'connected')).not.toThrow();
    expect(() => checkFrameHeader(h(PeerMsg.VOLUME_OP, 100), 'handshake')).toThrow(/before HELLO/);
    expect(() => checkFrameHeader(h(PeerMsg.VOLUME_OP, MAX_VOLUME_OP + 1), 'connected')).toThrow(/body of/);
    expect(() => checkFrameHeader(h(PeerMsg.VOLUME_OP_ACK, 3), 'connected')).toThrow(/body of/);
    expect(() => checkFrameHeader(h(PeerMsg.VOLUME_OP_ACK, 4 + MAX_VOLUME_OP + 1), 'connected')).toThrow(/body of/);
  });
});

describe('VolumeOps', () => {
  function pair() {
    const sent: Array<{ type: PeerMsg; id: bigint; body: Buffer }> = [];
    const applied: VolumeOp[] = [];
    let release: (() => void) | undefined;
    const port: VolumeOpsPort & { connected: boolean; hold: boolean } = {
      node: 'a',
      peerName: 'b',
      connected: true,
      hold: false,
      send: (type, id, b) => (sent.push({ type, id, body: b }), true),
      refusal: (op) => (op.name === 'taken' ? 'volume taken exists on a' : undefined),
      apply: (op) => {
        applied.push(op);
        return port.hold ? new Promise<void>((res) => (release = res)) : Promise.resolve();
      },
      log: createLogger('silent'),
      timeoutMs: 1000,
    };
    return { port, sent, applied, ops: new VolumeOps(port), release: () => release?.() };
  }
  const create = (name: string) => parseVolumeOp({ op: 'create', name, size: 4096, generation: gen });

  it('refuses while the link is down, or the name is taken here: nothing is sent', async () => {
    const t = pair();
    t.port.connected = false;
    await expect(t.ops.request(create('v'))).rejects.toThrow(/link to b is down/);
    t.port.connected = true;
    await expect(t.ops.request(create('taken'))).rejects.toThrow(/exists on a/);
    expect(t.sent).toEqual([]);
  });

  it('applies here only after the peer applied it; a peer refusal changes nothing here', async () => {
    const t = pair();
    const done = t.ops.request(create('v'));
    expect(t.sent[0]!.type).toBe(PeerMsg.VOLUME_OP);
    expect(t.applied).toEqual([]);
    // Another change meanwhile is refused, from the operator or from the peer.
    await expect(t.ops.request(create('w'))).rejects.toThrow(/another volume change is in progress/);
    t.ops.onFrame(PeerMsg.VOLUME_OP, 9n, encodeVolumeOp(create('w')));
    expect(decodeOpAck(t.sent[1]!.body).refusal).toMatch(/a is busy/);
    t.ops.onFrame(PeerMsg.VOLUME_OP_ACK, t.sent[0]!.id, encodeOpAck(undefined));
    expect(t.applied).toEqual([create('v')]); // applied in the answer's own turn
    await expect(done).resolves.toMatch(/done on b and a/);

    const refused = t.ops.request(create('x'));
    t.ops.onFrame(PeerMsg.VOLUME_OP_ACK, t.sent[2]!.id, encodeOpAck('volume x exists on b'));
    await expect(refused).rejects.toThrow(/b refused: volume x exists on b/);
    expect(t.applied).toHaveLength(1);
  });

  it('a lost link or no answer fails the change, saying its outcome on the peer is unknown; a late answer is ignored', async () => {
    const t = pair();
    const send = t.port.send;
    t.port.send = () => false; // the link went down between the check and the send
    await expect(t.ops.request(create('u'))).rejects.toThrow(/went down before the change was sent; nothing changed/);
    t.port.send = send;
    const lost = t.ops.request(create('v'));
    t.ops.linkLost();
    await expect(lost).rejects.toThrow(/lost before it answered/);
    const silent = t.ops.request(create('w'));
    await expect(silent).rejects.toThrow(/did not answer within 1000 ms/);
    t.ops.onFrame(PeerMsg.VOLUME_OP_ACK, t.sent[1]!.id, encodeOpAck(undefined));
    expect(t.applied).toEqual([]);
  });

  it('the peer\'s change is checked, applied, and answered once applied', async () => {
    const t = pair();
    t.port.hold = true;
    t.ops.onFrame(PeerMsg.VOLUME_OP, 3n, encodeVolumeOp(create('taken')));
    expect(decodeOpAck(t.sent[0]!.body).refusal).toMatch(/exists on a/);
    t.ops.onFrame(PeerMsg.VOLUME_OP, 4n, encodeVolumeOp(create('v')));
    expect(t.sent).toHaveLength(1);
    await expect(t.ops.request(create('w'))).rejects.toThrow(/in progress/);
    t.release();
    await new Promise((res) => setImmediate(res));
    expect(t.sent[1]).toMatchObject({ type: PeerMsg.VOLUME_OP_ACK, id: 4n });
    expect(decodeOpAck(t.sent[1]!.body).refusal).toBeUndefined();
  });
});
