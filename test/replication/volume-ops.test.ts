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
    /** What the volumes file holds as unfinished, each write in turn. */
    const writes: Array<VolumeOp | undefined> = [];
    const port: VolumeOpsPort & { connected: boolean; hold: boolean; unfinished: VolumeOp | undefined; noRoom?: string; failApply?: boolean } = {
      node: 'a',
      peerName: 'b',
      connected: true,
      hold: false,
      unfinished: undefined,
      send: (type, id, b) => (sent.push({ type, id, body: b }), true),
      refusal: (op) => (op.name === 'taken' ? 'volume taken exists on a' : undefined),
      finishRefusal: () => port.noRoom,
      apply: (op) => {
        applied.push(op);
        if (port.failApply) return Promise.reject(new Error('disk full'));
        // Applied: the volumes file records it, with no unfinished change.
        port.recordUnfinished(undefined);
        return port.hold ? new Promise<void>((res) => (release = res)) : Promise.resolve();
      },
      recordUnfinished: (op) => {
        writes.push(op);
        port.unfinished = op;
      },
      log: createLogger('silent'),
      timeoutMs: 1000,
    };
    return { port, sent, applied, writes, ops: new VolumeOps(port), release: () => release?.() };
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

  it('records the change as unfinished before sending it; clears it once applied, refused, or not sent', async () => {
    const t = pair();
    const done = t.ops.request(create('v'));
    expect(t.writes).toEqual([create('v')]);
    expect(t.sent).toHaveLength(1);
    t.ops.onFrame(PeerMsg.VOLUME_OP_ACK, t.sent[0]!.id, encodeOpAck(undefined));
    await done;
    expect(t.writes).toEqual([create('v'), undefined]);
    const refused = t.ops.request(create('x'));
    t.ops.onFrame(PeerMsg.VOLUME_OP_ACK, t.sent[1]!.id, encodeOpAck('no room'));
    await expect(refused).rejects.toThrow(/refused: no room/);
    expect(t.port.unfinished).toBeUndefined();
    t.port.send = () => false;
    await expect(t.ops.request(create('u'))).rejects.toThrow(/nothing changed/);
    expect(t.writes.slice(-2)).toEqual([create('u'), undefined]);
    // Not recorded: not sent.
    t.port.recordUnfinished = () => {
      throw new Error('EIO');
    };
    await expect(t.ops.request(create('w'))).rejects.toThrow(/could not be recorded in volumes.json \(EIO\); nothing changed/);
  });

  it('a lost link or no answer fails the change, saying it may have been applied there; it stays unfinished and blocks other changes', async () => {
    const t = pair();
    const lost = t.ops.request(create('v'));
    t.ops.linkLost();
    await expect(lost).rejects.toThrow(/lost before it answered: the change may have been applied there and not here; a finishes it/);
    expect(t.port.unfinished).toEqual(create('v'));
    await expect(t.ops.request(create('w'))).rejects.toThrow(/the earlier change \(create volume v .*\) is not settled yet/);
    t.ops.onFrame(PeerMsg.VOLUME_OP, 7n, encodeVolumeOp(create('p')));
    expect(decodeOpAck(t.sent.at(-1)!.body).refusal).toMatch(/has not settled its own change yet/);
    // An answer on a later link is for no change: the old link's id is gone.
    t.ops.onFrame(PeerMsg.VOLUME_OP_ACK, t.sent[0]!.id, encodeOpAck(undefined));
    expect(t.applied).toEqual([]);
  });

  it('a late answer on the same link settles it: applied when the peer applied it, cleared when it refused', async () => {
    const t = pair();
    await expect(t.ops.request(create('w'))).rejects.toThrow(/did not answer within 1000 ms: the change may have been applied there/);
    t.ops.onFrame(PeerMsg.VOLUME_OP_ACK, 999n, encodeOpAck(undefined)); // not its id
    expect(t.applied).toEqual([]);
    t.ops.onFrame(PeerMsg.VOLUME_OP_ACK, t.sent[0]!.id, encodeOpAck(undefined));
    expect(t.applied).toEqual([create('w')]);
    await new Promise((res) => setImmediate(res));
    expect(t.port.unfinished).toBeUndefined();
    const late = t.ops.request(create('x'));
    await expect(late).rejects.toThrow(/did not answer/);
    t.ops.onFrame(PeerMsg.VOLUME_OP_ACK, t.sent[1]!.id, encodeOpAck('volume x exists on b'));
    expect(t.applied).toEqual([create('w')]);
    expect(t.port.unfinished).toBeUndefined();
  });

  it('at the next HELLO: finished here when the peer\'s volumes are ours with it applied, dropped when they match ours', async () => {
    const vol = (name: string, size: number) => ({ name, size, generation: { current: gen, bitmap: gen, history: [gen, gen] as [string, string] }, state: 'UpToDate' as const, dirty: false, checksum: false, dirtyBytes: 0, trackingSince: 0 });
    const hello = (node: string, volumes: ReturnType<typeof vol>[], unfinished?: VolumeOp) => ({ version: 1, cluster: 'c', node, boot: gen, volumes, ...(unfinished && { unfinished }) });
    const t = pair();
    const del = parseVolumeOp({ op: 'delete', name: 'v' });
    const failed = t.ops.request(del);
    t.ops.linkLost();
    await expect(failed).rejects.toThrow(/may have been applied there/);
    const ours = hello('a', [vol('v', 4096), vol('w', 4096)], del);
    // The peer lacks v: it deleted it. Finished here (its clients dropped: force), the link refused meanwhile.
    const peer = hello('b', [vol('w', 4096)]);
    expect(t.ops.settle(ours, peer, 'peer lacks some of our volumes')).toEqual({ refuse: expect.stringMatching(/finishing the volume change delete volume v that a link loss cut short \(b applied it\)/), answer: false });
    expect(t.ops.settle(ours, peer, 'peer lacks some of our volumes')!.refuse).toMatch(/a is applying a volume change \(finishing delete volume v\)/);
    await new Promise((res) => setImmediate(res));
    await new Promise((res) => setImmediate(res));
    expect(t.applied).toEqual([{ ...del, force: true }]);
    expect(t.port.unfinished).toBeUndefined();
    expect(t.ops.settle(hello('a', [vol('w', 4096)]), peer, undefined)).toBeUndefined();

    // Never applied on the peer: the HELLOs match, the link comes up, the change is dropped.
    const never = t.ops.request(create('n'));
    t.ops.linkLost();
    await expect(never).rejects.toThrow(/may have been applied/);
    expect(t.ops.settle(hello('a', [vol('w', 4096)], create('n')), peer, undefined)).toBeUndefined();
    t.ops.linkUp();
    expect(t.port.unfinished).toBeUndefined();
    expect(t.applied).toHaveLength(1);

    // The peer's recorded change explains the difference (applied here): refused, our HELLO shown.
    const theirs = hello('b', [vol('w', 4096)], create('x'));
    expect(t.ops.settle(hello('a', [vol('w', 4096), vol('x', 4096)]), theirs, 'peer lacks some of our volumes')).toEqual({ refuse: expect.stringMatching(/waiting for b to finish it/), answer: true });
    // Any other difference: the link's own mismatch stands.
    expect(t.ops.settle(hello('a', [vol('w', 8192)]), theirs, 'volume "w" is 4096 bytes on the peer, 8192 here')).toBeUndefined();
  });

  it('a change the peer applied that cannot be finished here (no room, a failure) keeps the link down, saying why', async () => {
    const vol = (name: string, size: number) => ({ name, size, generation: { current: gen, bitmap: gen, history: [gen, gen] as [string, string] }, state: 'UpToDate' as const, dirty: false, checksum: false, dirtyBytes: 0, trackingSince: 0 });
    const hello = (node: string, volumes: ReturnType<typeof vol>[]) => ({ version: 1, cluster: 'c', node, boot: gen, volumes });
    const t = pair();
    const lost = t.ops.request(create('v'));
    t.ops.linkLost();
    await expect(lost).rejects.toThrow(/may have been applied/);
    t.port.noRoom = 'no room left on a for 4096 more bytes';
    const refused = t.ops.settle(hello('a', []), hello('b', [vol('v', 4096)]), 'peer has volume "v", we do not');
    expect(refused).toEqual({ refuse: expect.stringMatching(/^peer has volume "v", we do not: a could not finish the change create volume v .* \(no room left on a for 4096 more bytes\); docs\/OPERATIONS.md/), answer: false, manual: true });
    expect(t.applied).toEqual([]);
    expect(t.port.unfinished).toEqual(create('v'));

    const u = pair();
    const cut = u.ops.request(create('v'));
    u.ops.linkLost();
    await expect(cut).rejects.toThrow(/may have been applied/);
    u.port.failApply = true;
    expect(u.ops.settle(hello('a', []), hello('b', [vol('v', 4096)]), 'x')!.refuse).toMatch(/finishing/);
    await new Promise((res) => setImmediate(res));
    await new Promise((res) => setImmediate(res));
    expect(u.ops.settle(hello('a', []), hello('b', [vol('v', 4096)]), 'x')!.refuse).toMatch(/could not finish the change create volume v .* \(disk full\)/);
    expect(u.applied).toHaveLength(1); // tried once per start
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
