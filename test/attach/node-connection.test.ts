// attach's connection to a node treats the node as hostile too: a reply it cannot make sense of
// (a bad magic, a cookie never sent, data outside the request) ends that connection alone, and
// the requests it had in flight come back for the fail-over; nothing throws into the process.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { NodeConnection, type Forwarded } from '../../src/attach/node-connection.js';
import { Cmd, NbdErr } from '../../src/protocol/constants.js';
import { simpleReply } from '../../src/protocol/replies.js';
import { startFakeNode, type FakeNode, type FakeRequest } from '../support/fake-node.js';

const nodes: FakeNode[] = [];
afterEach(() => nodes.splice(0).forEach((n) => n.close()));

/** A node that negotiates like ours, then answers each request with `answer(header bytes)`. */
async function fakeNode(answer: (req: FakeRequest) => Buffer): Promise<number> {
  const node = await startFakeNode(answer);
  nodes.push(node);
  return node.port;
}

const op = (seq: number): Forwarded => ({ seq, type: Cmd.READ, flags: 0, offset: 0, length: 4096, data: Buffer.alloc(4096), sentAt: 0, resent: 0, errno: 0, message: '', extents: undefined });

describe('NodeConnection', () => {
  it('negotiates the export and gets a simple error reply through', async () => {
    const port = await fakeNode((r) => simpleReply(r, NbdErr.ENOSPC));
    const c = await NodeConnection.open({ host: '127.0.0.1', port }, 'vol0', 5000);
    expect(c.info).toMatchObject({ size: 1 << 20 });
    const replied = new Promise<Forwarded>((resolve) => c.listen({ replied: resolve, closed: () => undefined }));
    c.send(op(1));
    expect((await replied).errno).toBe(NbdErr.ENOSPC);
    c.close('done');
  });

  for (const [what, answer] of [
    ['a bad reply magic', (r: FakeRequest) => Buffer.from(simpleReply(r, 0)).fill(0xee, 0, 4)],
    ['a cookie never sent', (r: FakeRequest) => simpleReply({ ...r, cookieLo: r.cookieLo + 1000 }, 0)],
  ] as const) {
    it(`${what} ends the connection and hands its requests back`, async () => {
      const port = await fakeNode(answer);
      const c = await NodeConnection.open({ host: '127.0.0.1', port }, 'vol0', 5000);
      const closed = new Promise<{ reason: string; byNode: boolean; inFlight: Forwarded[] }>((resolve) => c.listen({ replied: () => undefined, closed: (reason, byNode, inFlight) => resolve({ reason, byNode, inFlight }) }));
      c.send(op(1));
      const r = await closed;
      expect(r.reason).toMatch(/^bad reply from the node/);
      expect(r.inFlight.map((o) => o.seq)).toEqual([1]);
    });
  }

  it('a node that never finishes the handshake is given up after the timeout', async () => {
    const server = net.createServer(() => undefined); // accepts, says nothing
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    await expect(NodeConnection.open({ host: '127.0.0.1', port }, 'vol0', 200)).rejects.toThrow(/no handshake within 200 ms/);
    server.close();
  });
});

