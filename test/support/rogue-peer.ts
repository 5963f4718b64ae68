// A rogue peer for tests: raw sockets to a node's peer port that connect and say nothing, send
// garbage, huge or forged HELLOs and forged frames — without the cluster key, or with it (a peer
// that passed authentication and still misbehaves). Every wait is bounded in time.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import type { PeerTls } from '../../src/replication/peer-tls.js';
import { encodeHello, type Hello } from '../../src/replication/hello.js';
import { encodeFrame, encodeFrameHeader, FrameDecoder, PEER_VERSION, PeerMsg, type FrameHeader } from '../../src/replication/peer-protocol.js';

export interface RogueSocket {
  readonly socket: net.Socket;
  /** Frames the node sent us (HELLO, ERROR…). */
  readonly frames: Array<{ header: FrameHeader; body: Buffer }>;
  /** Every byte the node sent us, as it came (decrypted when the rogue holds the key). */
  readonly received: Buffer[];
  /** Resolves once the node has closed the connection (or it failed): ms since connect. */
  readonly closed: Promise<number>;
  send(b: Buffer): void;
}

/**
 * Connects to 127.0.0.1:port (from `localAddress`, default 127.0.0.1); resolves once connected,
 * with `key` once its TLS handshake is done.
 */
export function rogueConnect(port: number, localAddress = '127.0.0.1', key?: PeerTls): Promise<RogueSocket> {
  return new Promise((resolve, reject) => {
    const to = { port, host: '127.0.0.1', localAddress };
    const socket = key ? key.connect(to) : net.connect(to);
    const started = Date.now();
    const frames: RogueSocket['frames'] = [];
    const received: Buffer[] = [];
    let garbled = false;
    const decoder = new FrameDecoder({ allocBody: (n) => Buffer.alloc(n), onFrame: (header, body) => frames.push({ header, body }) });
    socket.on('data', (d: Buffer) => {
      received.push(d);
      if (garbled) return;
      try {
        decoder.feed(d);
      } catch {
        garbled = true;
      }
    });
    const closed = new Promise<number>((res) => socket.once('close', () => res(Date.now() - started)));
    socket.on('error', () => undefined); // a reset is how a node may end it
    socket.once(key ? 'secureConnect' : 'connect', () =>
      resolve({
        socket,
        frames,
        received,
        closed,
        send: (b) => void (socket.destroyed || socket.write(b)),
      }),
    );
    socket.once('error', reject);
  });
}

/** Resolves with the close time, or rejects after `ms`: every wait in these tests is bounded. */
export function closedWithin(r: RogueSocket, ms: number): Promise<number> {
  return Promise.race([r.closed, new Promise<number>((_, rej) => setTimeout(() => rej(new Error(`the node kept the rogue connection open for ${ms} ms`)), ms).unref())]);
}

/** Waits (bounded) until the node has sent a frame of `type`. */
export async function frameWithin(r: RogueSocket, type: PeerMsg, ms: number): Promise<{ header: FrameHeader; body: Buffer }> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    const f = r.frames.find((x) => x.header.type === type);
    if (f) return f;
    if (r.socket.destroyed) break;
    await new Promise((res) => setTimeout(res, 10));
  }
  throw new Error(`no frame of type ${type} from the node within ${ms} ms`);
}

/**
 * A HELLO claiming to be `node` of the pair (`a+b`, one volume `vol0`), with a fresh boot id;
 * `volume` overrides the volume's other fields (e.g. `dirty`), `over` the HELLO's (volumes, unfinished…).
 */
export function rogueHello(node: string, size: number, generation: Hello['volumes'][number]['generation'], boot = randomBytes(8).toString('hex'), volume: Partial<Hello['volumes'][number]> = {}, over: Partial<Hello> = {}): Buffer {
  const hello: Hello = {
    version: PEER_VERSION,
    cluster: 'a+b',
    node,
    boot,
    volumes: [{ name: 'vol0', size, generation, state: 'UpToDate', dirty: false, checksum: false, dirtyBytes: 0, trackingSince: 0, ...volume }],
    ...over,
  };
  return encodeFrame(PeerMsg.HELLO, 0n, encodeHello(hello));
}

/** A frame with any type, id, flags and body (no check of any kind). */
export function forged(type: number, body: Buffer = Buffer.alloc(0), opts: { volume?: number; id?: bigint; flags?: number } = {}): Buffer {
  const id = (BigInt(opts.volume ?? 0) << 48n) | (opts.id ?? 1n);
  return Buffer.concat([encodeFrameHeader(type as PeerMsg, id, body.length, opts.flags ?? 0), body]);
}

/** A range body: volume u32, offset u64, length u32, then `extra`. */
export function rangeBody(volume: number, offset: number, length: number, extra: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(volume, 0);
  b.writeBigUInt64BE(BigInt(offset), 4);
  b.writeUInt32BE(length >>> 0, 12);
  return Buffer.concat([b, extra]);
}

/** A WRITE body: volume u32, flags u32, offset u64, digest u64 (not a valid one), then `data`. */
export function writeBody(volume: number, offset: number, data: Buffer): Buffer {
  const b = Buffer.alloc(24);
  b.writeUInt32BE(volume, 0);
  b.writeBigUInt64BE(BigInt(offset), 8);
  return Buffer.concat([b, data]);
}
