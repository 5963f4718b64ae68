// A node that negotiates like ours (the real handshake code) and answers each request with what
// `answer` gives, or not at all (undefined: the test answers later on that socket). For tests of
// attach's connections and paths without a cluster.
import net from 'node:net';
import { Handshake } from '../../src/protocol/handshake.js';
import { decodeRequestHeader } from '../../src/protocol/requests.js';
import { ExportRegistry } from '../../src/server/exports.js';
import type { Volume } from '../../src/volume/volume.js';

export type FakeRequest = ReturnType<typeof decodeRequestHeader>;

export interface FakeNode {
  readonly port: number;
  /** Client connections in the order they came. */
  readonly sockets: net.Socket[];
  /** New connections negotiate `size` from now on (a volume grown online). */
  setSize(size: number): void;
  close(): void;
}

export async function startFakeNode(answer: (req: FakeRequest, socket: net.Socket) => Buffer | undefined, size = 1 << 20): Promise<FakeNode> {
  const registry = new ExportRegistry();
  const offer = (bytes: number) => {
    const volume = { size: bytes, capabilities: { readOnly: false, flush: true, fua: true, trim: true, zero: true, fastZero: false, cache: false, multiConn: true } } as unknown as Volume;
    registry.remove('vol0');
    registry.add('vol0', volume);
  };
  offer(size);
  const sockets: net.Socket[] = [];
  const server = net.createServer((s) => {
    sockets.push(s);
    const hs = new Handshake(registry, () => false, 'off');
    let transmission = false;
    s.write(Handshake.greeting());
    s.on('data', (chunk: Buffer) => {
      if (!transmission) {
        const step = hs.receive(chunk);
        for (const b of step.out) s.write(b);
        if (step.outcome.kind === 'ready') transmission = true;
        return;
      }
      for (let at = 0; at + 28 <= chunk.length; at += 28) {
        const reply = answer(decodeRequestHeader(chunk, at), s);
        if (reply) s.write(reply);
      }
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    sockets,
    setSize: offer,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
