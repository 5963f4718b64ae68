// The peer link alone, without disks: how many WRITE frames a second one node's PeerLink sends
// to another's, plain vs TLS-PSK vs mutual x509, with `depth` frames in flight (each answered by
// a WRITE_ACK once its body is given back), and the CPU time each end spends per MiB. Two
// processes (this file runs itself as the receiver), so each end has its own event loop as the
// nodes do. Rounds alternate the transports: this kind of machine drifts by tens of percent, and
// on a loaded machine the CPU time per MiB is the steadier figure (the frames a second follow it
// on an idle one: both ends are bound by their one thread).
//   npx tsx bench/mirror/link-throughput.ts [--size 1M] [--depth 8] [--seconds 3] [--rounds 3] [--receiver listener|dialer]
// --receiver: which end of the link receives the frames (the dialer is the node whose name sorts
// first; in bench:mirror the clients write to node a, the dialer, so the listener receives).
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { parseSize } from '../../src/config/units.js';
import type { HelloFields } from '../../src/replication/hello.js';
import { PeerLink } from '../../src/replication/peer-link.js';
import { encodeWriteHeader, PEER_VERSION, PeerMsg } from '../../src/replication/peer-protocol.js';
import { PeerPsk, type PeerTls } from '../../src/replication/peer-tls.js';
import { PeerX509 } from '../../src/replication/peer-x509.js';
import { issueCertificate, makeCa } from '../../src/security/keygen-ca.js';

const { values: opts } = parseArgs({
  options: {
    size: { type: 'string', default: '1M' },
    depth: { type: 'string', default: '8' },
    seconds: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '3' },
    receiver: { type: 'string', default: 'listener' },
    role: { type: 'string' },
  },
});
const log = pino({ level: 'warn' });
const gen = { current: '0123456789abcdef', bitmap: '0000000000000000', history: ['0000000000000000', '0000000000000000'] as [string, string] };
const hello = (node: string): HelloFields => ({
  version: PEER_VERSION,
  cluster: 'bench',
  node,
  volumes: [{ name: 'vol0', size: 2 ** 40, generation: gen, state: 'UpToDate', dirty: false, checksum: false, dirtyBytes: 0, trackingSince: 0 }],
});

/** The node names of the sender and the receiver: the dialer is the one whose name sorts first. */
const [SENDER, RECEIVER] = opts.receiver === 'dialer' ? (['b', 'a'] as const) : (['a', 'b'] as const);

/** What the parent sends the receiver: which transport (its key material), and where the sender listens. */
interface Setup {
  kind: 'plain' | 'psk' | 'x509';
  secret?: string;
  certs?: { ca: string; a: { cert: string; key: string }; b: { cert: string; key: string } };
}

function transport(s: Setup, node: 'a' | 'b'): PeerTls | undefined {
  if (s.kind === 'psk') return PeerPsk.fromSecret(Buffer.from(s.secret!, 'hex'));
  if (s.kind === 'x509') return new PeerX509({ ca: Buffer.from(s.certs!.ca), cert: Buffer.from(s.certs![node].cert), key: Buffer.from(s.certs![node].key) }, node === 'a' ? 'b' : 'a');
  return undefined;
}

/** The receiver: answers every WRITE with a WRITE_ACK once its body is given back; reports its CPU time when the link ends. */
async function receive(): Promise<void> {
  process.once('message', async ({ setup: s, senderPort }: { setup: Setup; senderPort: number }) => {
    let cpu = process.cpuUsage();
    // Bodies land in reused buffers, as a node's land in its WASM slots (a fresh 1 MiB Buffer per
    // frame would cost page faults the nodes do not pay).
    const free: Buffer[] = [];
    const link: PeerLink = new PeerLink({
      allocBody: (n) => (free.length > 0 && free[free.length - 1]!.length === n ? free.pop()! : Buffer.allocUnsafeSlow(n)),
      releaseBody: (body) => void (free.length < 64 && free.push(body)),
      tls: transport(s, RECEIVER),
      hello: () => hello(RECEIVER),
      listen: { host: '127.0.0.1', port: 0 },
      peer: { host: '127.0.0.1', port: senderPort },
      peerName: SENDER,
      timeoutMs: 10_000,
      log,
      onConnected: () => void (cpu = process.cpuUsage()),
      onDisconnected: () => {
        const used = process.cpuUsage(cpu);
        process.send!({ cpuUs: used.user + used.system });
      },
      onFrame: (h, body) => {
        link.release(body);
        link.send(PeerMsg.WRITE_ACK, h.id, Buffer.alloc(4));
      },
    });
    const at = await link.start();
    process.send!(at.port);
    process.once('disconnect', () => process.exit(0));
  });
}

/**
 * The sender: `depth` WRITE frames of `size` bytes in flight for `seconds`; frames a second, and
 * its CPU time. `receiver(ownPort)` starts the receiver and gives its port.
 */
async function send(s: Setup, receiver: (ownPort: number) => Promise<number>, size: number, depth: number, seconds: number): Promise<{ rate: number; frames: number; cpuUs: number }> {
  const payload = [encodeWriteHeader({ volume: 0, flags: 0, offset: 0, digest: 0n }), randomBytes(size)];
  let done = 0;
  let next = 0n;
  let stopAt = 0;
  let startedAt = 0;
  let cpu = process.cpuUsage();
  const peer = { host: '127.0.0.1', port: 1 };
  return new Promise((resolve) => {
    const link: PeerLink = new PeerLink({
      tls: transport(s, SENDER),
      hello: () => hello(SENDER),
      listen: { host: '127.0.0.1', port: 0 },
      peer, // its port is known once the receiver listens, before either dials
      peerName: RECEIVER,
      timeoutMs: 10_000,
      log,
      onConnected: () => {
        cpu = process.cpuUsage();
        startedAt = Date.now();
        stopAt = startedAt + seconds * 1000;
        for (let i = 0; i < depth; i++) link.send(PeerMsg.WRITE, ++next, payload);
      },
      onFrame: (_h, body) => {
        link.release(body);
        done++;
        if (Date.now() < stopAt) return void link.send(PeerMsg.WRITE, ++next, payload);
        if (done === Number(next)) {
          const used = process.cpuUsage(cpu);
          const ms = Date.now() - startedAt;
          link.stop();
          resolve({ rate: (done * 1000) / ms, frames: done, cpuUs: used.user + used.system });
        }
      },
    });
    void link.start().then(async (own) => void (peer.port = await receiver(own.port)));
  });
}

async function main(): Promise<void> {
  if (opts.role === 'receiver') return receive();
  const size = parseSize(opts.size!);
  const [depth, seconds, rounds] = [Number(opts.depth), Number(opts.seconds), Number(opts.rounds)];
  const ca = await makeCa();
  const [a, b] = [await issueCertificate(ca, { node: 'a', hosts: [] }), await issueCertificate(ca, { node: 'b', hosts: [] })];
  const setups: Setup[] = [{ kind: 'plain' }, { kind: 'psk', secret: randomBytes(32).toString('hex') }, { kind: 'x509', certs: { ca: ca.cert, a, b } }];
  const results = new Map<string, Array<{ rate: number; sendUsPerMiB: number; receiveUsPerMiB: number }>>(setups.map((s) => [s.kind, []]));
  console.log(`# peer link alone: ${opts.size} WRITE frames to the ${opts.receiver}, ${depth} in flight, ${seconds} s per run, median of ${rounds} alternating rounds, ${new Date().toISOString()}`);
  for (let r = 0; r < rounds; r++) {
    for (const s of setups) {
      const child = fork(fileURLToPath(import.meta.url), ['--role', 'receiver', '--receiver', opts.receiver!], { execArgv: process.execArgv, stdio: 'inherit' });
      const receiver = (senderPort: number) => {
        child.send({ setup: s, senderPort });
        return new Promise<number>((res) => child.once('message', (m) => res(m as number)));
      };
      const receiverCpu = new Promise<number>((res) => child.on('message', (m) => typeof m === 'object' && res((m as { cpuUs: number }).cpuUs)));
      const sent = await send(s, receiver, size, depth, seconds);
      const mib = (sent.frames * size) / 2 ** 20;
      results.get(s.kind)!.push({ rate: sent.rate, sendUsPerMiB: sent.cpuUs / mib, receiveUsPerMiB: (await receiverCpu) / mib });
      child.disconnect();
      await new Promise((res) => child.once('exit', res));
    }
  }
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  const plain = median(results.get('plain')!.map((r) => r.rate));
  for (const [kind, xs] of results) {
    const rate = median(xs.map((r) => r.rate));
    const [tx, rx] = [median(xs.map((r) => r.sendUsPerMiB)), median(xs.map((r) => r.receiveUsPerMiB))];
    console.log(
      `${kind.padEnd(6)} ${rate.toFixed(0).padStart(7)} frames/s  ${((rate * size) / 2 ** 20).toFixed(0).padStart(6)} MiB/s  ${(rate / plain).toFixed(2)}x plain  CPU per MiB: sender ${tx.toFixed(0).padStart(5)} us, receiver ${rx.toFixed(0).padStart(5)} us   (runs: ${xs.map((x) => x.rate.toFixed(0)).join(', ')} frames/s)`,
    );
  }
}

void main();
