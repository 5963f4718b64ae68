// A TCP proxy for cutting and restoring a link between two processes on loopback, for
// damaging peer-link data frames in flight (client → upstream direction), for stopping a link
// at a chosen peer-link frame (either direction, before the frame passes), and for recording
// what crosses it (what an onlooker sees, and what an attacker could replay).
import net from 'node:net';
import { Transform } from 'node:stream';
import { FRAME_HEADER_SIZE, PeerMsg } from '../../src/replication/peer-protocol.js';

/** Frame types whose last body byte the proxy may flip: the ones carrying data. */
const DATA_FRAMES = new Set<number>([PeerMsg.WRITE, PeerMsg.RS_DATA, PeerMsg.PEER_READ_DATA]);

/**
 * Follows the peer-link frame stream (header, then body) across chunks and flips one bit of the
 * last body byte of data frames while `damage()` says so. Pure bookkeeping; no reframing.
 */
export class FrameDamager {
  private head = Buffer.alloc(FRAME_HEADER_SIZE);
  private headFill = 0;
  private bodyLeft = 0;
  private damaging = false;
  damaged = 0;
  /** The types of the frames whose header ended in the last chunk passed. */
  readonly headers: number[] = [];

  constructor(private readonly damage: () => boolean) {}

  /** Returns the chunk, with damage applied (to a copy, made only then: never the input). */
  pass(chunk: Buffer): Buffer {
    let out = chunk;
    this.headers.length = 0;
    let pos = 0;
    while (pos < out.length) {
      if (this.bodyLeft === 0) {
        const n = Math.min(FRAME_HEADER_SIZE - this.headFill, out.length - pos);
        out.copy(this.head, this.headFill, pos, pos + n);
        this.headFill += n;
        pos += n;
        if (this.headFill < FRAME_HEADER_SIZE) break;
        this.headFill = 0;
        this.bodyLeft = this.head.readUInt32BE(8);
        this.headers.push(this.head.readUInt16BE(4));
        this.damaging = this.bodyLeft > 32 && DATA_FRAMES.has(this.head.readUInt16BE(4)) && this.damage();
        continue;
      }
      const n = Math.min(this.bodyLeft, out.length - pos);
      this.bodyLeft -= n;
      pos += n;
      if (this.bodyLeft === 0 && this.damaging) {
        if (out === chunk) out = Buffer.from(chunk);
        out[pos - 1] = out[pos - 1]! ^ 0x01;
        this.damaged++;
        this.damaging = false;
      }
    }
    return out;
  }
}

export class TcpProxy {
  private readonly server: net.Server;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private open = true;
  /** Nothing passes any more, not even a close (see silence). */
  private silent = false;
  /** Nothing passes on the open connections, closes do; new connections are refused (see stopAt). */
  private held = false;
  /** Where the link stops (stopAt). */
  private stopping: { type: PeerMsg; how: 'cut' | 'hold' } | undefined;
  port = 0;
  /** Data frames from client to upstream still to damage (Infinity: all of them). */
  damageFrames = 0;
  /** Data frames damaged so far. */
  damagedFrames = 0;
  /** With `record` set, the bytes of each connection since, both ways, as they passed. */
  record = false;
  readonly recordings: Array<{ toUpstream: Buffer[]; toClient: Buffer[] }> = [];

  constructor(private readonly target: { host: string; port: number }) {
    this.server = net.createServer((client) => {
      if (!this.open) return void client.destroy();
      const upstream = net.connect(this.target.port, this.target.host);
      const pair: [net.Socket, net.Socket] = [client, upstream];
      this.pairs.add(pair);
      const end = (side: net.Socket) => () => {
        side.destroy();
        if (this.silent) return; // the other side hears nothing
        client.destroy();
        upstream.destroy();
        this.pairs.delete(pair);
      };
      client.on('error', end(client)).on('close', end(client));
      upstream.on('error', end(upstream)).on('close', end(upstream));
      const recording = this.record ? { toUpstream: [] as Buffer[], toClient: [] as Buffer[] } : undefined;
      if (recording) this.recordings.push(recording);
      const damager = new FrameDamager(() => {
        if (this.damageFrames <= 0) return false;
        this.damageFrames--;
        this.damagedFrames++;
        return true;
      });
      // Ends are not piped: a close reaches the other side through `end` (and not at all when silent).
      const toClient = new FrameDamager(() => false);
      const passing = (chunk: Buffer, frames: FrameDamager, into: Buffer[] | undefined): Buffer | undefined => {
        const stop = this.stopping;
        if (stop && frames.headers.includes(stop.type)) {
          this.stopping = undefined;
          if (stop.how === 'cut') this.cut();
          else this.hold();
        }
        if (this.silent || this.held || !this.pairs.has(pair)) return undefined;
        into?.push(chunk);
        return chunk;
      };
      client.pipe(new Transform({ transform: (chunk: Buffer, _enc, cb) => cb(null, passing(damager.pass(chunk), damager, recording?.toUpstream)) })).pipe(upstream, { end: false });
      upstream.pipe(new Transform({ transform: (chunk: Buffer, _enc, cb) => cb(null, passing(toClient.pass(chunk), toClient, recording?.toClient)) })).pipe(client, { end: false });
    });
  }

  async start(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  /**
   * Connections stay open but nothing passes either way, not even a close: each side's peer
   * went dark without a word (a power loss, a dead switch). New connections are refused.
   */
  silence(): void {
    this.silent = true;
    this.open = false;
  }

  /**
   * The next peer-link frame of `type`, either way, stops the link before it passes: `cut`
   * (every connection dropped, new ones refused), or `hold` (nothing passes any more on the open
   * connections, but a close still does: a process killed is seen; new ones refused). Until
   * restore.
   */
  stopAt(type: PeerMsg, how: 'cut' | 'hold'): void {
    this.stopping = { type, how };
  }

  private hold(): void {
    this.held = true;
    this.open = false;
  }

  /** Drops every connection and refuses new ones (a cut cable). */
  cut(): void {
    this.open = false;
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  restore(): void {
    this.open = true;
    this.held = false;
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
