// The TCP link between the two nodes: HELLO exchange, heartbeats, a dead-peer timeout and
// reconnection with backoff. It carries frames for the layers above (the mirrored volume, next)
// and tells them when the peer comes and goes. Groundwork for two-node mirroring.
//
// Who dials: the node whose name sorts first dials, the other listens, so there is never a race
// between two crossing connections. The dialer retries with backoff (100 ms, then every 250 ms);
// the listener takes the newest connection.
import net from 'node:net';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import { ProtocolViolation } from '../protocol/errors.js';
import { adoptWithOnRead, onReadOptions, type ReceiveSink } from '../server/receive.js';
import { decodeHello, encodeHello, helloMismatch, type Hello } from './hello.js';
import { encodeFrame, encodeFrameHeader, FrameDecoder, PeerMsg, type FrameHeader } from './peer-protocol.js';

/** Connection states as DRBD names them (and `nbd-mirror status` will show them). */
export type LinkState = 'Connecting' | 'Connected' | 'StandAlone';

export interface PeerLinkOptions {
  /** This node's HELLO, asked afresh for every connection (generations change). */
  readonly hello: () => Hello;
  /** Where this node accepts the peer. */
  readonly listen: HostPort;
  /** Where the peer accepts us. */
  readonly peer: HostPort;
  readonly peerName: string;
  /** The peer counts as dead after this long without a frame (default 2000 ms). */
  readonly timeoutMs?: number;
  /** PING interval (default timeoutMs / 4). */
  readonly heartbeatMs?: number;
  readonly log: Logger;
  /** A buffer to receive a frame body of `length` bytes into (default: a fresh Buffer). */
  allocBody?(length: number): Buffer;
  onConnected?(peer: Hello): void;
  onDisconnected?(reason: string): void;
  /** Frames other than the link's own (HELLO, PING, PONG, ERROR). */
  onFrame?(header: FrameHeader, body: Buffer): void;
}

/** Capped low: a returning peer should be found within a quarter second (4 tries a second is cheap). */
const MAX_BACKOFF_MS = 250;
/** A frame body with at least this much still to come is read straight into its buffer. */
const DIRECT_BODY_MIN = 64 * 1024;

export class PeerLink {
  private server: net.Server | undefined;
  private socket: net.Socket | undefined;
  private peerHello: Hello | undefined;
  /** Decodes the current connection's frames. */
  private decoder: FrameDecoder | undefined;
  /** The HELLO sent on the current connection. */
  private ourHello: Hello | undefined;
  private lastSeen = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private backoffMs = 100;
  /** Frames queued this turn of the event loop (see send). */
  private outbox: Buffer[] = [];
  private stopped = false;
  private readonly dialer: boolean;
  private readonly timeoutMs: number;

  constructor(private readonly o: PeerLinkOptions) {
    this.dialer = o.hello().node < o.peerName;
    this.timeoutMs = o.timeoutMs ?? 2000;
  }

  get state(): LinkState {
    if (this.stopped) return 'StandAlone';
    return this.peerHello ? 'Connected' : 'Connecting';
  }

  /** The peer's HELLO while connected. */
  get peer(): Hello | undefined {
    return this.peerHello;
  }

  /** Starts listening (both nodes do, so the roles never depend on start order) and dialing. */
  async start(): Promise<HostPort> {
    // Like the NBD listener: read into one reused buffer (onread) instead of a Buffer per read.
    this.server = net.createServer({ pauseOnConnect: true }, (accepted) => {
      let s: net.Socket | undefined = undefined;
      s = adoptWithOnRead(accepted, this.receiveSink(() => s));
      this.adopt(s, 'accepted');
    });
    const addr = await new Promise<HostPort>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.o.listen.port, this.o.listen.host, () => {
        const a = this.server!.address() as net.AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
    if (this.dialer) this.dial();
    return addr;
  }

  /**
   * Queues a frame for the peer (body given as parts, never joined); false when there is no link.
   * Frames queued during one turn of the event loop leave together in one writev, at the end of
   * that turn: a batch of client writes read in one go costs one syscall on the link, not one each.
   */
  send(type: PeerMsg, id: bigint, body: Buffer | readonly Buffer[] = [], flags = 0): boolean {
    if (!this.peerHello || !this.socket) return false;
    const parts = Buffer.isBuffer(body) ? [body] : body;
    const length = parts.reduce((n, b) => n + b.length, 0);
    this.outbox.push(encodeFrameHeader(type, id, length, flags), ...parts);
    if (this.outbox.length === parts.length + 1) process.nextTick(this.flushOutbox);
    return true;
  }

  /** Calls `done` once everything written to the socket has left this process (or there is no socket). */
  drain(done: () => void): void {
    const s = this.socket;
    if (!s || s.writableLength === 0) return done();
    let called = false;
    const once = (): void => {
      if (!called) (called = true), done();
    };
    s.once('drain', once);
    s.once('close', once);
  }

  /** Runs `fn` after the frames queued so far have been handed to the socket. */
  afterSend(fn: () => void): void {
    if (this.outbox.length === 0) return fn();
    process.nextTick(fn);
  }

  private readonly flushOutbox = (): void => {
    const parts = this.outbox;
    this.outbox = [];
    const s = this.socket;
    if (!s || parts.length === 0) return;
    s.cork();
    for (const part of parts) s.write(part);
    s.uncork();
  };

  /** Drops the current connection so both sides meet again (and decide again) at once. */
  reconnect(reason: string): void {
    this.drop(reason, true);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    this.drop('link stopped', false);
    this.server?.close();
  }

  private dial(): void {
    if (this.stopped || this.socket) return;
    const s: net.Socket = net.connect({ port: this.o.peer.port, host: this.o.peer.host, onread: onReadOptions(this.receiveSink(() => s)) });
    s.resume(); // flowing, so the peer's hang-up is seen as 'end'
    // A powered-off peer answers nothing: without a limit the kernel's SYN retries (up to ~2 min,
    // then 32 s apart) would decide when its return is noticed.
    const connectLimit = setTimeout(() => s.destroy(new Error('connect timed out')), this.timeoutMs);
    s.once('connect', () => {
      clearTimeout(connectLimit);
      this.adopt(s, 'dialed');
    });
    s.once('close', () => clearTimeout(connectLimit));
    s.once('error', (err) => {
      if (this.socket !== s) {
        this.o.log.debug({ err: err.message, peer: this.o.peer }, 'peer not reachable yet');
        s.destroy();
        this.scheduleDial();
      }
    });
  }

  private scheduleDial(): void {
    if (!this.dialer || this.stopped) return;
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.dial(), this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
  }

  private adopt(s: net.Socket, how: 'dialed' | 'accepted'): void {
    if (this.stopped) return void s.destroy();
    if (this.socket) this.drop('replaced by a new connection from the peer', false);
    this.socket = s;
    s.setNoDelay(true);
    this.lastSeen = Date.now();
    this.decoder = new FrameDecoder({
      allocBody: this.o.allocBody ?? ((n) => Buffer.allocUnsafe(n)),
      onFrame: (h, body) => this.onFrame(s, h, body),
    });
    s.on('error', (err) => this.o.log.debug({ err: err.message }, 'peer socket error'));
    s.on('close', () => {
      if (this.socket === s) this.drop('peer closed the connection', true);
    });
    this.o.log.debug({ how }, 'peer socket open, sending HELLO');
    this.ourHello = this.o.hello();
    s.write(encodeFrame(PeerMsg.HELLO, 0n, encodeHello(this.ourHello)));
    this.heartbeat = setInterval(() => this.beat(), this.o.heartbeatMs ?? Math.max(50, this.timeoutMs / 4));
  }

  /** What reads from peer socket `socket()` go to; large frame bodies are read straight into their buffer. */
  private receiveSink(socket: () => net.Socket | undefined): ReceiveSink {
    const mine = (): FrameDecoder | undefined => (this.socket !== undefined && this.socket === socket() ? this.decoder : undefined);
    return {
      // `chunk` is a view of a reused buffer: only valid during the call.
      onChunk: (chunk) => this.decoding(socket()!, (d) => d.feed(chunk)),
      directTarget: () => mine()?.bodyTarget(DIRECT_BODY_MIN),
      onDirect: (n) => this.decoding(socket()!, (d) => d.bodyArrived(n)),
    };
  }

  private decoding(s: net.Socket, work: (d: FrameDecoder) => void): void {
    if (this.socket !== s || !this.decoder) return;
    // Replies produced while handling one read (e.g. the ACKs of a batch of WRITEs) leave in one writev.
    s.cork();
    try {
      work(this.decoder);
    } catch (err) {
      // A rogue or broken peer costs the link, never the process (data is not touched).
      const reason = (err as Error).message;
      if (err instanceof ProtocolViolation) this.o.log.warn({ reason }, 'peer sent a malformed frame, dropping the link');
      else this.o.log.error({ err }, 'error handling a peer frame, dropping the link');
      this.drop(reason, true);
    } finally {
      s.uncork();
    }
  }

  private beat(): void {
    if (Date.now() - this.lastSeen > this.timeoutMs) {
      this.o.log.warn({ timeoutMs: this.timeoutMs }, 'peer silent past the timeout, dropping the link');
      return this.drop(`no frame from the peer for ${this.timeoutMs} ms`, true);
    }
    if (this.peerHello) this.socket?.write(encodeFrame(PeerMsg.PING, 0n));
  }

  private onFrame(s: net.Socket, h: FrameHeader, body: Buffer): void {
    if (this.socket !== s) return;
    this.lastSeen = Date.now();
    if (!this.peerHello) return this.onHandshakeFrame(s, h, body);
    switch (h.type) {
      case PeerMsg.PING:
        s.write(encodeFrame(PeerMsg.PONG, h.id));
        return;
      case PeerMsg.PONG:
        return;
      case PeerMsg.ERROR:
        this.o.log.warn({ reason: body.toString('utf8') }, 'peer reported an error');
        return this.drop(`peer error: ${body.toString('utf8')}`, true);
      default:
        this.o.onFrame?.(h, body);
    }
  }

  private onHandshakeFrame(s: net.Socket, h: FrameHeader, body: Buffer): void {
    if (h.type === PeerMsg.ERROR) {
      this.o.log.warn({ reason: body.toString('utf8') }, 'peer refused the link');
      return this.drop(`peer refused: ${body.toString('utf8')}`, true);
    }
    if (h.type !== PeerMsg.HELLO) {
      this.o.log.warn({ type: h.type }, 'peer sent a frame before HELLO, dropping the link');
      return this.drop(`frame type ${h.type} before HELLO`, true);
    }
    let hello: Hello;
    try {
      hello = decodeHello(body);
    } catch (err) {
      this.o.log.warn({ reason: (err as Error).message }, 'bad HELLO from the peer, dropping the link');
      return this.drop((err as Error).message, true);
    }
    const mismatch = helloMismatch(this.ourHello!, hello) ?? (hello.node !== this.o.peerName ? `peer is "${hello.node}", expected "${this.o.peerName}"` : undefined);
    if (mismatch) {
      this.o.log.error({ reason: mismatch }, 'refusing the peer link');
      s.write(encodeFrame(PeerMsg.ERROR, 0n, Buffer.from(mismatch)));
      return this.drop(mismatch, true);
    }
    this.peerHello = hello;
    this.backoffMs = 100;
    this.o.log.info({ peer: hello.node }, 'peer link connected');
    this.o.onConnected?.(hello);
  }

  /** Ends the current connection; `retry` schedules a new dial (dialer side). */
  private drop(reason: string, retry: boolean): void {
    const s = this.socket;
    const wasConnected = this.peerHello !== undefined;
    this.socket = undefined;
    this.peerHello = undefined;
    this.outbox = []; // frames meant for that connection never go to the next one
    clearInterval(this.heartbeat);
    s?.destroy();
    if (wasConnected) {
      this.o.log.warn({ reason }, 'peer link lost');
      this.o.onDisconnected?.(reason);
    }
    if (retry) this.scheduleDial();
  }
}
