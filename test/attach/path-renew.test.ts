// A path renewed for a volume grown online (path.ts `renew`): the new connection negotiates the
// new size and takes new requests at once, while the old one answers what it had and then
// closes — nothing waits, nothing is lost or sent twice, the path stays ready. If the old
// connection is lost with requests in flight, the path is lost as a whole with all of them.
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { Forwarded } from '../../src/attach/node-connection.js';
import { NodePath, type PathEvents } from '../../src/attach/path.js';
import { Cmd } from '../../src/protocol/constants.js';
import { simpleReply } from '../../src/protocol/replies.js';
import { startFakeNode, type FakeNode, type FakeRequest } from '../support/fake-node.js';
import { until } from '../support/cluster.js';

const nodes: FakeNode[] = [];
const paths: NodePath[] = [];
afterEach(() => {
  paths.splice(0).forEach((p) => p.stop());
  nodes.splice(0).forEach((n) => n.close());
});

// TRIM: it changes data (the re-send rule counts it) and has no payload (the fake reads headers only).
const op = (seq: number): Forwarded => ({ seq, type: Cmd.TRIM, flags: 0, offset: 0, length: 512, data: undefined, sentAt: 0, resent: 0, errno: 0, message: '', extents: undefined });

/** A path to a fake node that holds every request on its first connection (answered by the test), renewed with one in flight there. */
async function setup(grownTo = 2 << 20) {
  const held: FakeRequest[] = [];
  const hold = { later: false };
  const node = await startFakeNode((req, s) => {
    if (s === node.sockets[0] || hold.later) return void held.push(req);
    return simpleReply(req, 0);
  });
  nodes.push(node);
  const replied: number[] = [];
  const lost: Array<{ reason: string; seqs: number[] }> = [];
  let changed = 0;
  const events: PathEvents = {
    changed: () => void changed++,
    replied: (_p, o) => void replied.push(o.seq),
    lost: (_p, reason, _byNode, inFlight) => void lost.push({ reason, seqs: inFlight.map((o) => o.seq) }),
  };
  const path = new NodePath('a', { host: '127.0.0.1', port: node.port }, 'vol0', { ioTimeoutMs: 5000, reconnectMs: 60_000 }, pino({ level: 'silent' }), events, undefined);
  paths.push(path);
  path.start();
  await until(() => path.state === 'ready');
  path.send(op(1)); // held by the node on the first connection
  await until(() => held.length === 1);
  node.setSize(grownTo);
  const before = changed;
  path.renew('grown');
  await until(() => changed > before);
  return { node, path, held, hold, replied, lost };
}

describe('NodePath.renew', () => {
  it('moves new requests to a connection at the new size while the old one drains, then closes the old one', async () => {
    const { node, path, held, replied, lost } = await setup();
    expect(path.info?.size).toBe(2 << 20);
    expect(path.state).toBe('ready');
    expect(path.generation).toBe(1); // not a reconnect: the node's old connection is not gone
    expect(path.inFlight).toBe(1);
    expect(path.writesInFlight()).toBe(true); // the old connection's write still counts for the re-send rule
    path.send(op(2)); // on the new connection, answered at once
    await until(() => replied.includes(2));
    const oldClosed = new Promise((r) => node.sockets[0]!.once('close', r));
    node.sockets[0]!.write(simpleReply(held[0]!, 0));
    await until(() => replied.includes(1));
    await oldClosed;
    expect(path.inFlight).toBe(0);
    expect(path.state).toBe('ready');
    expect(lost).toEqual([]);
    expect(replied).toEqual([2, 1]);
    path.send(op(3));
    await until(() => replied.includes(3));
  });

  it('the old connection lost with a request in flight takes the whole path down, with every request of both', async () => {
    const { node, path, held, hold, replied, lost } = await setup();
    hold.later = true;
    path.send(op(7)); // on the new connection, unanswered
    await until(() => held.length === 2);
    node.sockets[0]!.destroy();
    await until(() => lost.length === 1);
    expect(path.state).toBe('down');
    expect(lost[0]!.seqs.sort()).toEqual([1, 7]);
    expect(lost[0]!.reason).toMatch(/the connection a renewal replaced was lost with requests in flight/);
    expect(replied).toEqual([]);
  });

  it('a renewal that finds the node still at the old size keeps the path as it was, and is not asked again within the reconnect interval', async () => {
    const { node, path, held, replied, lost } = await setup(1 << 20);
    expect(path.info?.size).toBe(1 << 20);
    node.sockets[0]!.write(simpleReply(held[0]!, 0));
    await until(() => replied.includes(1));
    path.renew('grown, asked again at once');
    path.send(op(2));
    await until(() => replied.includes(2));
    expect(node.sockets.length).toBe(2);
    expect(path.state).toBe('ready');
    expect(lost).toEqual([]);
  });
});
