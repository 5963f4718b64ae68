// The TCP link between the two nodes: HELLO exchange, heartbeats, a dead-peer timeout and
// reconnection with backoff. It carries frames for the layers above (the mirrored volume, next)
// and tells them when the peer comes and goes.
//
// Who dials: the node whose name sorts first dials, the other listens, so there is never a race
// between two crossing connections. The dialer retries with backoff (100 ms, then every 250 ms).
//
// Strangers never disturb the live link. The listener takes connections only from the peer's
// configured host (the dialer binds its side to its own listen address, so that is where it
// comes from), and the dialer, whose peer never dials, takes none. A connection is only a
// candidate until its HELLO (at most MAX_HELLO bytes, within the link timeout) is accepted,
// and the listener answers with its own HELLO only then: a bare connect learns nothing. A
// candidate with a valid HELLO while a link is up replaces it only if the live link does not
// answer a PING within half the link timeout — the peer restarted (its HELLO then carries a new
// boot id) or reconnected, and the old connection is dead. A live link that answers keeps
// running and the candidate is refused, whatever its HELLO claims. Refusals are logged at most
// once a minute per source address and kind (a refused HELLO, a failed TLS handshake).
//
// Authentication (peer-tls.ts: TLS-PSK with the cluster secret; peer-x509.ts: mutual x509 with
// the cluster CA). With either, every connection is TLS from its first byte: the listener checks
// the source host, then runs the TLS handshake, and only a connection whose handshake proved the
// key (or a certificate of the CA naming the peer) becomes a candidate that may send HELLO. A
// failed handshake (another key or CA, another name, a plain peer, garbage) is refused like a
// bad HELLO and never reaches the probe logic, so it cannot disturb the live link. The handshake
// counts against the same deadline as the HELLO (the link timeout) and the same candidate limit.
// Decrypted bytes come as 'data' chunks (a TLSSocket has no `onread`) and feed the same
// decoders. Without either the link is plain, as before, and says so once at start.
//
// Backpressure (link-limits.ts). Receive: each volume frame handed to onFrame is in work, at the
// cost the frame table gives (workCost), until the volume gives its body back (`release`). At
// the limit the decoder holds the next frame at its header, unallocated, keeping the bytes after
// it, and the socket stops reading; a release lets decoding and reading go on from a fresh turn
// of the event loop. The budget is the link's, not the connection's: frames of a lost connection
// still in work keep their cost until they end, so reconnecting frees no memory early. While
// held, the peer's silence is this node's doing: the dead-peer check is skipped, and its clock
// restarts when reading resumes. The peer still gets this node's PINGs (sending goes on), so
// only its ack timeout applies: if this node's disk never completes the work it holds, the
// peer's writes go unanswered and it resets the link, as it should.
// Send: queued bytes over a cap, or a queue from which nothing leaves for `sendStallMs`, reset
// the link (the peer does not read what this node sends).
//
// Why this cannot deadlock: receiving is held only by work this node's volumes complete on their
// own — local disk I/O, handlers returning — never by the send side (a full send queue never
// stops reading: both nodes could then wait on each other's reading for ever). Sending never
// waits for anything (it only queues, bounded by the reset above), so both nodes held at once
// each resume as their own disks finish. One dependency on the peer remains: on a resync target,
// a peer WRITE to a range whose resync data is still on the way waits for that data (the overlap
// rule), and the data follows it in the stream. Such writes hold the budget only when the peer's
// clients keep 64 MiB (or 1024 writes) in flight on the few MiB being resynced at that moment;
// if they ever did, the peer's ack timeout resets the link rather than wait.
import { randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import net from 'node:net';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import { ProtocolViolation } from '../protocol/errors.js';
import { adoptWithOnRead, onReadOptions, receiveFromStream, type ReceiveSink } from '../server/receive.js';
import { decodeHello, encodeHello, helloMismatch, type Hello, type HelloFields } from './hello.js';
import { DEFAULT_LINK_LIMITS, SendWatch, WorkBudget, type LinkLimits } from './link-limits.js';
import { checkFrameHeader, workCost } from './peer-frames.js';
import { encodeFrame, encodeFrameHeader, FrameDecoder, PeerMsg, type FrameHeader } from './peer-protocol.js';
import { looksLikeTls, type PeerTls } from './peer-tls.js';

/** Connection states as DRBD names them (and `nbd-mirror status` will show them). */
export type LinkState = 'Connecting' | 'Connected' | 'StandAlone';

export interface PeerLinkOptions {
  /** This node's HELLO, asked afresh for every connection (generations change); the link adds its boot id. */
  readonly hello: () => HelloFields;
  /** Where this node accepts the peer. */
  readonly listen: HostPort;
  /** Where the peer accepts us; only its host may connect to us. */
  readonly peer: HostPort;
  readonly peerName: string;
  /** TLS for every connection: PSK with the cluster secret, or mutual x509; without it the link is plain. */
  readonly tls?: PeerTls;
  /** The peer counts as dead after this long without a frame (default 2000 ms). */
  readonly timeoutMs?: number;
  /** PING interval (default timeoutMs / 4). */
  readonly heartbeatMs?: number;
  /**
   * The peer may take nothing of what is queued for it for this long before the link is reset
   * (default 5 x timeoutMs, link.ackTimeout's default): an honest peer stops reading only while
   * its disk is behind, and gets as long for that as for leaving a write unanswered.
   */
  readonly sendStallMs?: number;
  readonly log: Logger;
  /** Receive and send bounds (default DEFAULT_LINK_LIMITS; tests make them tiny). */
  readonly limits?: Partial<LinkLimits>;
  /** A buffer to receive a frame body of `length` bytes into (default: a fresh Buffer). */
  allocBody?(length: number): Buffer;
  /** Gives back a buffer from allocBody: once its frame is done (through `release`), or cut off by a lost connection. */
  releaseBody?(body: Buffer): void;
  onConnected?(peer: Hello): void;
  onDisconnected?(reason: string): void;
  /**
   * A peer HELLO of this cluster and the expected node, before it is accepted (`mismatch`: how
   * its volumes differ from `ours`, if they do): a refusal while a volume change is settled
   * (volume-ops.ts), or undefined to go on as usual. With `answer`, a listener shows the dialer
   * its HELLO before refusing (the dialer finishes its change from it); with `manual`, the
   * refusal is one an operator must repair, logged like a mismatch.
   */
  settle?(ours: HelloFields, theirs: Hello, mismatch: string | undefined): { refuse: string; answer: boolean; manual?: boolean } | undefined;
  /** Why the dialer does not dial now, if it does not: a volume change half applied here, which its HELLO would list either way. */
  holdDial?(): string | undefined;
  /** Frames other than the link's own (HELLO, PING, PONG, ERROR); each body goes back through `release`. */
  onFrame?(header: FrameHeader, body: Buffer): void;
}

/** Capped low: a returning peer should be found within a quarter second (4 tries a second is cheap). */
const MAX_BACKOFF_MS = 250;
/** A frame body with at least this much still to come is read straight into its buffer. */
const DIRECT_BODY_MIN = 64 * 1024;
/** Connections waiting for their HELLO at once; more are refused (each is bounded in time too). */
const MAX_CANDIDATES = 8;
/** The log line of a link refused while a volume change is settled (it comes up by itself after). */
const SETTLING = 'refusing the peer link until a volume change is settled';
/** A source address whose connections are refused is logged at most this often. */
const REFUSAL_LOG_MS = 60_000;
/** Source addresses (with the message logged for them) remembered for rate-limiting refusal logs. */
const REFUSAL_LOG_ADDRESSES = 1024;
const TLS_FAILED = 'peer-link TLS handshake failed';
const DAY_MS = 86_400_000;
/** A node certificate closer than this to its end date is reported at every start. */
const EXPIRY_WARNING_DAYS = 30;

/** An accepted connection whose HELLO has not been accepted yet. */
interface Candidate {
  readonly from: string;
  readonly address: string;
  readonly decoder: FrameDecoder;
  /** Ends it when no acceptable HELLO came within the link timeout. */
  readonly timer: NodeJS.Timeout;
}

/** What the link holds now and how often it stopped reading (for status). */
export interface LinkCounters {
  framesInWork: number;
  bytesInWork: number;
  /** Times reading stopped because the frames in work reached a limit, since start-up. */
  receivePauses: number;
  /** Bytes queued for the peer's socket. */
  sendQueuedBytes: number;
}

/** A live link being asked whether it still answers, because `socket` wants to replace it. */
interface Probe {
  readonly socket: net.Socket;
  readonly hello: Hello;
  readonly id: bigint;
  readonly timer: NodeJS.Timeout;
}

export class PeerLink {
  /** Random per link, i.e. per process start: tells a restarted peer from the one linked. */
  readonly bootId = randomBytes(8).toString('hex');
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
  /** The dialer's connection until it becomes the link (or fails): stop() ends it, unlogged. */
  private dialing: net.Socket | undefined;
  private backoffMs = 100;
  /** Frames queued this turn of the event loop (see send). */
  private outbox: Buffer[] = [];
  private stopped = false;
  private readonly dialer: boolean;
  private readonly timeoutMs: number;
  private readonly sendStallMs: number;
  private readonly candidates = new Map<net.Socket, Candidate>();
  /** Accepted connections in their TLS handshake (they count as candidates), with their deadline. */
  private readonly handshakes = new Map<net.Socket, NodeJS.Timeout>();
  private probe: Probe | undefined;
  private probes = 0n;
  private readonly refusalsLogged = new Map<string, { at: number; since: number }>();
  private readonly limits: LinkLimits;
  /** Frames handed to onFrame and not given back yet, across connections. */
  private readonly work: WorkBudget;
  private sendWatch: SendWatch | undefined;
  private resumeScheduled = false;
  private receivePauses = 0;

  constructor(private readonly o: PeerLinkOptions) {
    this.dialer = o.hello().node < o.peerName;
    this.timeoutMs = o.timeoutMs ?? 2000;
    this.sendStallMs = o.sendStallMs ?? 5 * this.timeoutMs;
    this.limits = { ...DEFAULT_LINK_LIMITS, ...o.limits };
    this.work = new WorkBudget(this.limits);
  }

  get state(): LinkState {
    if (this.stopped) return 'StandAlone';
    return this.peerHello ? 'Connected' : 'Connecting';
  }

  /** The peer's HELLO while connected. */
  get peer(): Hello | undefined {
    return this.peerHello;
  }

  get counters(): LinkCounters {
    return { framesInWork: this.work.frames, bytesInWork: this.work.bytes, receivePauses: this.receivePauses, sendQueuedBytes: this.socket?.writableLength ?? 0 };
  }

  /**
   * Gives back the body of a frame handed to onFrame, once its volume is done with it: its cost
   * leaves the receive budget, the buffer goes back (releaseBody), and a held frame may go on.
   */
  release(body: Buffer): void {
    const wasInWork = this.work.release(body);
    this.o.releaseBody?.(body);
    if (!wasInWork || !this.decoder?.holding || this.resumeScheduled) return;
    // From a fresh turn: release runs inside a volume's completion, which must end before the
    // next frames are handled (as IoBudget wakes connections).
    this.resumeScheduled = true;
    setImmediate(this.resumeReceiving);
  }

  private readonly resumeReceiving = (): void => {
    this.resumeScheduled = false;
    const s = this.socket;
    if (!s || !this.decoder?.holding) return;
    this.decoding(s, (d) => d.resume());
    // The silence while held was this node's: the peer gets a whole timeout from now.
    if (!this.decoder?.holding) this.lastSeen = Date.now();
  };

  /** Starts listening (both nodes do, so the roles never depend on start order) and dialing. */
  async start(): Promise<HostPort> {
    if (!this.o.tls) this.o.log.warn("the peer link is neither authenticated nor encrypted: any process on the peer's host can link, and mirrored data crosses the network in clear (set security.clusterSecret or security.peerCertificates, docs/SECURITY.md)");
    else this.o.log.info({ auth: this.o.tls.kind, expires: this.o.tls.expires }, 'the peer link is authenticated and encrypted');
    // An expired certificate ends the link at the next reconnect: say so while there is time.
    const left = this.o.tls?.expires && (this.o.tls.expires.getTime() - Date.now()) / DAY_MS;
    if (left !== undefined && left < EXPIRY_WARNING_DAYS) this.o.log.warn({ expires: this.o.tls!.expires, daysLeft: Math.floor(left) }, "this node's peer-link certificate expires soon: make a new one (docs/SECURITY.md, rotating certificates)");
    this.server = net.createServer({ pauseOnConnect: true }, (accepted) => void this.accept(accepted));
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
    if (!s || s.destroyed) return done();
    let called = false;
    const once = (): void => {
      if (called) return;
      called = true;
      clearTimeout(limit);
      done();
    };
    // The callback of an empty write runs once everything written before it has left (a
    // 'drain' event comes only after a write that filled the buffer: with TLS, bytes can be
    // queued without one, and a stop waited for ever). Bounded: a peer that reads nothing
    // must not keep this node from stopping.
    const limit = setTimeout(once, this.timeoutMs);
    s.write(Buffer.alloc(0), once);
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
    // Checked as the queue grows, not only at the next heartbeat: answers to a rogue's reads
    // could otherwise pile up at disk speed in between.
    this.checkSending(s);
  };

  /**
   * Resets the link if the peer does not read what this node sends (see SendWatch). The outbox
   * is empty whenever this runs (flushed at the end of each turn), so the socket's queue is all
   * there is; `bytesWritten` counts queued bytes too, so the difference is what has left.
   */
  private checkSending(s: net.Socket): boolean {
    const why = this.sendWatch?.check(s.writableLength, s.bytesWritten - s.writableLength, Date.now());
    if (!why) return false;
    this.o.log.warn({ reason: why, stallMs: this.sendStallMs, limitBytes: this.limits.queuedBytes }, 'the peer does not read what this node sends, dropping the link');
    this.drop(`the peer does not read what this node sends: ${why}`, true);
    return true;
  }

  /** Drops the current connection so both sides meet again (and decide again) at once. */
  reconnect(reason: string): void {
    this.drop(reason, true);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    for (const s of [...this.candidates.keys()]) this.endCandidate(s);
    for (const [s, timer] of this.handshakes) (clearTimeout(timer), s.destroy());
    this.handshakes.clear();
    this.dialing?.destroy();
    this.drop('link stopped', false);
    this.server?.close();
  }

  private dial(): void {
    if (this.stopped || this.socket) return;
    const held = this.o.holdDial?.();
    if (held !== undefined) {
      this.o.log.debug({ reason: held }, 'not dialing the peer yet');
      return this.scheduleDial();
    }
    // From our own listen address when it is one: that is the host the peer lets in.
    const local = this.o.listen.host;
    const localAddress = net.isIP(local) && local !== '0.0.0.0' && local !== '::' ? local : undefined;
    const to = { port: this.o.peer.port, host: this.o.peer.host, localAddress };
    let dialed: net.Socket | undefined = undefined;
    const sink = this.receiveSink(() => dialed);
    const secure = this.o.tls;
    let s: net.Socket;
    // TLS or not, reads go into one reused buffer or straight into a frame body's (onread).
    s = dialed = this.dialing = secure ? secure.connect({ ...to, onread: onReadOptions(sink) }) : net.connect({ ...to, onread: onReadOptions(sink) });
    s.resume(); // flowing, so the peer's hang-up is seen as 'end'
    // A powered-off peer answers nothing: without a limit the kernel's SYN retries (up to ~2 min,
    // then 32 s apart) would decide when its return is noticed. With TLS the handshake is
    // inside the same limit: a peer that takes the connection and stalls the handshake is dead too.
    let connected = false;
    const connectLimit = setTimeout(() => s.destroy(new Error(connected ? 'TLS handshake timed out' : 'connect timed out')), this.timeoutMs);
    s.once('connect', () => (connected = true));
    s.once(secure ? 'secureConnect' : 'connect', () => {
      clearTimeout(connectLimit);
      this.adoptDialed(s);
    });
    s.once('close', () => {
      clearTimeout(connectLimit);
      if (this.dialing === s) this.dialing = undefined;
    });
    s.once('error', (err) => {
      if (this.stopped) return void s.destroy(); // a dial the stop cut short: nothing to tell
      if (this.socket !== s) {
        // Reached, but no key agreed: the operator must hear of it (a retry comes every 250 ms).
        if (secure && connected) this.logTlsFailure(this.o.peer.host, secure.failure(err), { peer: to });
        else this.o.log.debug({ err: err.message, peer: this.o.peer }, 'peer not reachable yet');
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

  /** The dialer's connection is up: it becomes the link and sends its HELLO first. */
  private adoptDialed(s: net.Socket): void {
    this.dialing = undefined;
    if (this.stopped) return void s.destroy();
    this.socket = s;
    this.decoder = this.decoderFor(s);
    s.setNoDelay(true);
    this.lastSeen = Date.now();
    this.sendWatch = new SendWatch(this.limits, this.sendStallMs, this.lastSeen);
    s.on('error', (err) => this.o.log.debug({ err: err.message }, 'peer socket error'));
    s.on('close', () => {
      if (this.socket !== s) return;
      // Hung up on our HELLO without an ERROR: it did not take this connection at all.
      if (!this.peerHello) this.logLimited(this.o.peer.host, 'the peer closed the connection before answering HELLO', { peer: this.o.peer, hint: this.o.tls ? (this.o.tls.kind.startsWith('mutual') ? "it may not accept this node's certificate (its log says why)" : undefined) : 'it may require TLS (security.clusterSecret or security.peerCertificates), or not take connections from this address' });
      this.drop('peer closed the connection', true);
    });
    this.o.log.debug('peer socket open, sending HELLO');
    this.ourHello = this.makeHello();
    s.write(encodeFrame(PeerMsg.HELLO, 0n, encodeHello(this.ourHello)));
    this.startHeartbeat();
  }

  /** A connection to our listener: a candidate until its HELLO is accepted, if it may come at all. */
  private async accept(accepted: net.Socket): Promise<void> {
    const address = hostOf(accepted.remoteAddress ?? '');
    const from = `${address}:${accepted.remotePort}`;
    let refusal: string | undefined;
    if (this.stopped) refusal = 'the link is stopped';
    else if (this.dialer) refusal = 'this node dials its peer and takes no inbound peer links';
    else if (!(await this.isPeerHost(address))) refusal = `not the peer's address (${this.o.peer.host})`;
    else if (this.candidates.size + this.handshakes.size >= MAX_CANDIDATES) refusal = `${MAX_CANDIDATES} peer-link handshakes already waiting`;
    if (refusal) {
      accepted.destroy();
      return this.logRefusal(address, from, refusal);
    }
    const deadline = Date.now() + this.timeoutMs;
    const secure = this.o.tls;
    if (!secure) {
      // Like the NBD listener: read into one reused buffer (onread) instead of a Buffer per read.
      let s: net.Socket | undefined = undefined;
      s = adoptWithOnRead(accepted, this.plainCandidateSink(() => s, this.receiveSink(() => s)));
      return this.addCandidate(s, from, address, deadline);
    }
    // The TLS handshake first: a connection becomes a candidate (whose frames are read) only
    // once it proved it holds the key or the peer's certificate, within the same deadline.
    const timer = setTimeout(() => {
      this.handshakes.delete(accepted);
      accepted.destroy();
      this.logRefusal(address, from, `no TLS handshake within ${this.timeoutMs} ms`);
    }, this.timeoutMs);
    this.handshakes.set(accepted, timer);
    secure.accept(accepted, (err, t) => {
      if (this.handshakes.get(accepted) !== timer) return void t?.destroy(); // timed out, or the link stopped
      clearTimeout(timer);
      this.handshakes.delete(accepted);
      if (err || !t) return this.logTlsFailure(address, secure.failure(err ?? new Error('no socket')), { from });
      receiveFromStream(t, this.receiveSink(() => t));
      this.addCandidate(t, from, address, deadline);
    });
  }

  /** A connection that may now send its HELLO (the TLS handshake, if any, is done), until `deadline`. */
  private addCandidate(socket: net.Socket, from: string, address: string, deadline: number): void {
    const timer = setTimeout(() => this.refuseCandidate(socket, `no acceptable HELLO within ${this.timeoutMs} ms`), Math.max(0, deadline - Date.now()));
    this.candidates.set(socket, { from, address, decoder: this.decoderFor(socket), timer });
    socket.setNoDelay(true);
    socket.on('error', (err) => this.o.log.debug({ err: err.message, from }, 'peer socket error'));
    socket.on('close', () => {
      if (this.socket === socket) this.drop('peer closed the connection', true);
      else this.endCandidate(socket);
    });
  }

  /**
   * A plain candidate's reads; a first read that is a TLS handshake is refused with a reason an
   * operator can act on (the frame decoder would only see a bad magic).
   */
  private plainCandidateSink(socket: () => net.Socket | undefined, sink: ReceiveSink): ReceiveSink {
    let first = true;
    return {
      ...sink,
      onChunk: (chunk) => {
        if (first && ((first = false), looksLikeTls(chunk))) return this.refuseCandidate(socket()!, 'it speaks TLS: the peer has security.clusterSecret or security.peerCertificates set and this node neither');
        sink.onChunk(chunk);
      },
    };
  }

  /** Is `address` one the peer's configured host stands for (names are looked up each time: they may move)? */
  private async isPeerHost(address: string): Promise<boolean> {
    const host = this.o.peer.host;
    if (net.isIP(host)) return hostOf(host) === address;
    try {
      return (await lookup(host, { all: true })).some((a) => hostOf(a.address) === address);
    } catch (err) {
      this.o.log.warn({ host, err: (err as Error).message }, 'cannot look up the peer host; refusing the connection');
      return false;
    }
  }

  /** One decoder per connection; what it admits and where bodies go follow the connection's phase. */
  private decoderFor(s: net.Socket): FrameDecoder {
    const linked = (): boolean => this.socket === s && this.peerHello !== undefined;
    return new FrameDecoder({
      // Size and phase from the frame table before a byte of the body is buffered: a HELLO over
      // MAX_HELLO, or any other frame before HELLO, is refused at its header.
      admit: (h) => checkFrameHeader(h, linked() ? 'connected' : 'handshake'),
      // The receive budget (see the file comment); never during the handshake.
      hold: (h) => linked() && !this.work.admits(h.length),
      // Handshake frames are small (the table says so): WASM slots only for the live link. An
      // empty body is a new object too: the work budget tells frames apart by their body.
      allocBody: (n) => (n === 0 ? Buffer.alloc(0) : linked() && this.o.allocBody ? this.o.allocBody(n) : Buffer.allocUnsafe(n)),
      onFrame: (h, body) => this.onFrame(s, h, body),
    });
  }

  private decoderOf(s: net.Socket | undefined): FrameDecoder | undefined {
    if (s === undefined) return undefined;
    return s === this.socket ? this.decoder : this.candidates.get(s)?.decoder;
  }

  /** What reads from peer socket `socket()` go to; large frame bodies are read straight into their buffer. */
  private receiveSink(socket: () => net.Socket | undefined): ReceiveSink {
    return {
      // `chunk` is a view of a reused buffer: only valid during the call.
      onChunk: (chunk) => this.decoding(socket()!, (d) => d.feed(chunk)),
      directTarget: () => this.decoderOf(socket())?.bodyTarget(DIRECT_BODY_MIN),
      onDirect: (n) => this.decoding(socket()!, (d) => d.bodyArrived(n)),
    };
  }

  private decoding(s: net.Socket, work: (d: FrameDecoder) => void): void {
    const d = this.decoderOf(s);
    if (!d) return;
    // Replies produced while handling one read (e.g. the ACKs of a batch of WRITEs) leave in one writev.
    s.cork();
    try {
      work(d);
    } catch (err) {
      // A rogue or broken peer costs the link (or the candidate connection), never the process.
      const reason = (err as Error).message;
      if (s !== this.socket) return this.refuseCandidate(s, reason);
      if (err instanceof ProtocolViolation) this.o.log.warn({ reason }, 'peer sent a malformed frame, dropping the link');
      else this.o.log.error({ err }, 'error handling a peer frame, dropping the link');
      this.drop(reason, true);
    } finally {
      s.uncork();
    }
    if (s === this.socket) this.updateReading(s);
  }

  /** The live socket reads while its decoder takes frames and stops while one is held (the decoder keeps what arrives meanwhile). */
  private updateReading(s: net.Socket): void {
    const held = this.decoder!.holding;
    if (held && !s.isPaused()) {
      this.receivePauses++;
      s.pause();
    } else if (!held && s.isPaused()) {
      s.resume();
    }
  }

  private startHeartbeat(): void {
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => this.beat(), this.o.heartbeatMs ?? Math.max(50, this.timeoutMs / 4));
  }

  private beat(): void {
    // Held, this node reads nothing: the peer's silence is then ours (see resumeReceiving).
    if (!this.decoder?.holding && Date.now() - this.lastSeen > this.timeoutMs) {
      this.o.log.warn({ timeoutMs: this.timeoutMs }, 'peer silent past the timeout, dropping the link');
      return this.drop(`no frame from the peer for ${this.timeoutMs} ms`, true);
    }
    const s = this.socket;
    if (!s || this.checkSending(s)) return;
    if (this.peerHello) s.write(encodeFrame(PeerMsg.PING, 0n));
  }

  private onFrame(s: net.Socket, h: FrameHeader, body: Buffer): void {
    if (this.candidates.has(s)) return this.onCandidateFrame(s, h, body);
    if (this.socket !== s) return;
    this.lastSeen = Date.now();
    if (!this.peerHello) return this.onHandshakeFrame(s, h, body);
    switch (h.type) {
      case PeerMsg.PING:
        s.write(encodeFrame(PeerMsg.PONG, h.id));
        return;
      case PeerMsg.PONG:
        if (this.probe && h.id === this.probe.id) this.probeAnswered();
        return;
      case PeerMsg.ERROR:
        this.o.log.warn({ reason: body.toString('utf8') }, 'peer reported an error');
        return this.drop(`peer error: ${body.toString('utf8')}`, true);
      default: {
        if (!this.o.onFrame) return; // nobody to work on it, nor to give it back
        const cost = workCost(h, body);
        if (cost !== undefined) this.work.charge(body, cost);
        this.o.onFrame(h, body);
      }
    }
  }

  /** The dialer's connection before the listener's HELLO. */
  private onHandshakeFrame(s: net.Socket, h: FrameHeader, body: Buffer): void {
    if (h.type === PeerMsg.ERROR) {
      // The dialer retries every 250 ms: each reason is logged once a minute, with a count.
      const reason = body.toString('utf8');
      this.logLimited(`${this.o.peer.host} ${reason}`, 'peer refused the link', { reason });
      return this.drop(`peer refused: ${body.toString('utf8')}`, true);
    }
    let hello: Hello;
    try {
      hello = this.acceptableHello(body, this.ourHello!);
    } catch (err) {
      const reason = (err as Error).message;
      if (err instanceof MismatchError && err.settling) this.o.log.warn({ reason }, SETTLING);
      else this.o.log.error({ reason }, 'refusing the peer link');
      s.write(errorFrame(reason));
      return this.drop(reason, true);
    }
    this.linked(hello, 'dialed');
  }

  /** An accepted connection's frames until its HELLO is accepted (the table admits only HELLO and ERROR). */
  private onCandidateFrame(s: net.Socket, h: FrameHeader, body: Buffer): void {
    const c = this.candidates.get(s)!;
    if (h.type === PeerMsg.ERROR) return this.refuseCandidate(s, `it sent ERROR: ${body.toString('utf8')}`);
    if (this.probe?.socket === s) return this.refuseCandidate(s, 'HELLO sent twice');
    let hello: Hello;
    const ours = this.makeHello();
    try {
      hello = this.acceptableHello(body, ours);
    } catch (err) {
      const reason = (err as Error).message;
      if (!(err instanceof MismatchError)) return this.refuseCandidate(s, reason, undefined, reason);
      // Shown only to a peer whose HELLO named a change that turns our volumes into its own.
      if (err.settling?.answer) s.write(encodeFrame(PeerMsg.HELLO, 0n, encodeHello(ours)));
      return this.refuseCandidate(s, reason, err.settling ? SETTLING : 'refusing the peer link', reason);
    }
    clearTimeout(c.timer);
    if (!this.socket) return this.promote(s, hello);
    if (this.probe) return this.refuseCandidate(s, 'another connection is being checked against the live link');
    // A link is up. Is it still alive? Only a live link that does not answer may be replaced.
    const live = this.peerHello!;
    const id = (1n << 63n) | ++this.probes;
    const timer = setTimeout(() => this.probeUnanswered(), Math.max(50, this.timeoutMs / 2));
    this.probe = { socket: s, hello, id, timer };
    this.o.log.debug({ from: c.from, boot: hello.boot, liveBoot: live.boot }, 'a second peer-link connection: asking the live link whether it still answers');
    this.socket.write(encodeFrame(PeerMsg.PING, id));
  }

  /** The live link answered the probe: it is healthy and stays; the candidate is refused. */
  private probeAnswered(): void {
    const p = this.probe!;
    this.probe = undefined;
    clearTimeout(p.timer);
    const why = p.hello.boot === this.peerHello?.boot ? 'the peer process on the live link connected again' : `its boot id ${p.hello.boot} is not the live peer's, whose link still answers`;
    this.refuseCandidate(p.socket, `a live link is up and answering (${why})`, undefined, 'a live link with this peer is up');
  }

  /** The live link did not answer: the peer restarted or reconnected; the candidate replaces it. */
  private probeUnanswered(): void {
    const p = this.probe!;
    this.probe = undefined;
    if (!this.candidates.has(p.socket)) return;
    const restarted = p.hello.boot !== this.peerHello?.boot;
    this.o.log.warn({ from: this.candidates.get(p.socket)!.from, boot: p.hello.boot, restarted }, 'the live peer link stopped answering; a new connection from the peer replaces it');
    this.drop(restarted ? 'the peer restarted (new boot id); its old connection no longer answers' : 'the peer reconnected; its old connection no longer answers', false);
    this.promote(p.socket, p.hello);
  }

  /** A candidate whose HELLO was accepted becomes the link; only now does the peer get our HELLO. */
  private promote(s: net.Socket, hello: Hello): void {
    const c = this.candidates.get(s)!;
    this.candidates.delete(s);
    clearTimeout(c.timer);
    this.socket = s;
    this.decoder = c.decoder;
    this.lastSeen = Date.now();
    this.sendWatch = new SendWatch(this.limits, this.sendStallMs, this.lastSeen);
    this.ourHello = this.makeHello();
    s.write(encodeFrame(PeerMsg.HELLO, 0n, encodeHello(this.ourHello)));
    this.startHeartbeat();
    this.linked(hello, 'accepted');
  }

  private linked(hello: Hello, how: 'dialed' | 'accepted'): void {
    this.peerHello = hello;
    this.backoffMs = 100;
    this.o.log.info({ peer: hello.node, boot: hello.boot, how }, 'peer link connected');
    this.o.onConnected?.(hello);
  }

  /** The peer's HELLO, if it may link with `ours`; throws why not. */
  private acceptableHello(body: Buffer, ours: Hello): Hello {
    const hello = decodeHello(body);
    const mismatch = helloMismatch(ours, hello) ?? (hello.node !== this.o.peerName ? `peer is "${hello.node}", expected "${this.o.peerName}"` : undefined);
    // Our cluster and the expected peer: what differs (if anything) is volumes, perhaps a change to settle.
    const settling = hello.cluster === ours.cluster && hello.node === this.o.peerName ? this.o.settle?.(ours, hello, mismatch) : undefined;
    if (settling) throw new MismatchError(settling.refuse, settling.manual ? undefined : settling);
    if (mismatch) throw new MismatchError(mismatch);
    return hello;
  }

  private makeHello(): Hello {
    return { ...this.o.hello(), boot: this.bootId };
  }

  /** Ends a candidate connection, telling the other end why when `tell` is given (an ERROR frame). */
  private refuseCandidate(s: net.Socket, reason: string, message?: string, tell?: string): void {
    const c = this.candidates.get(s);
    if (!c) return;
    this.endCandidate(s, tell);
    this.logRefusal(c.address, c.from, reason, message);
  }

  private endCandidate(s: net.Socket, tell?: string): void {
    const c = this.candidates.get(s);
    if (!c) return;
    this.candidates.delete(s);
    clearTimeout(c.timer);
    if (this.probe?.socket === s) {
      clearTimeout(this.probe.timer);
      this.probe = undefined;
    }
    // With a reason to tell: closed once the ERROR is written (it is small: the kernel takes it at once).
    if (tell !== undefined && !s.destroyed) {
      s.end(errorFrame(tell));
      s.destroySoon();
    } else {
      s.destroy();
    }
  }

  private logRefusal(address: string, from: string, reason: string, message = 'refused a peer-link connection'): void {
    this.logLimited(address, message, { from, reason });
  }

  /**
   * A failed TLS handshake, limited per address *and reason*: the reasons are a fixed set
   * (OpenSSL's codes, a certificate of the cluster CA naming another node), so an operator who
   * changes a node's keys sees the new reason at once, and nobody can vary it to flood the log.
   */
  private logTlsFailure(address: string, reason: string, fields: Record<string, unknown>): void {
    this.logLimited(`${address} ${reason}`, TLS_FAILED, { ...fields, reason });
  }

  /**
   * Logs a warning at most once per REFUSAL_LOG_MS per address and message (with how many were
   * left out since), so a flood of connections, or a dialer retrying, cannot flood the log.
   */
  private logLimited(address: string, message: string, fields: Record<string, unknown>): void {
    const now = Date.now();
    const key = `${message}\0${address}`;
    const seen = this.refusalsLogged.get(key);
    if (seen && now - seen.at < REFUSAL_LOG_MS) return void seen.since++;
    if (!seen && this.refusalsLogged.size >= REFUSAL_LOG_ADDRESSES) this.refusalsLogged.clear();
    this.refusalsLogged.set(key, { at: now, since: 0 });
    this.o.log.warn({ ...fields, refusedSinceLastLog: seen?.since ?? 0 }, message);
  }

  /** Ends the current connection; `retry` schedules a new dial (dialer side). */
  private drop(reason: string, retry: boolean): void {
    const s = this.socket;
    const wasConnected = this.peerHello !== undefined;
    const partial = this.decoder?.abandon();
    this.socket = undefined;
    this.decoder = undefined;
    this.sendWatch = undefined;
    this.peerHello = undefined;
    this.outbox = []; // frames meant for that connection never go to the next one
    clearInterval(this.heartbeat);
    s?.destroy();
    // A body cut off mid-frame was a WASM slot perhaps: give it back (no frame will use it).
    if (partial && wasConnected) this.o.releaseBody?.(partial);
    if (wasConnected) {
      this.o.log.warn({ reason }, 'peer link lost');
      this.o.onDisconnected?.(reason);
    }
    // A candidate waiting on a probe of the link just lost needs no probe any more.
    const p = this.probe;
    if (p && !this.stopped) {
      this.probe = undefined;
      clearTimeout(p.timer);
      if (this.candidates.has(p.socket)) this.promote(p.socket, p.hello);
    }
    if (retry) this.scheduleDial();
  }
}

/** A HELLO from a node that must not link with this one (another cluster, volumes differ…), or not yet (`settling`: a volume change). */
class MismatchError extends ProtocolViolation {
  constructor(
    message: string,
    readonly settling?: { answer: boolean },
  ) {
    super(message);
  }
}

/** An ERROR frame carrying `reason` (cut to what the table lets an ERROR carry). */
function errorFrame(reason: string): Buffer {
  return encodeFrame(PeerMsg.ERROR, 0n, Buffer.from(reason).subarray(0, 4096));
}

/** An address as the kernel reports it, without the IPv4-mapped prefix, so hosts compare equal. */
function hostOf(address: string): string {
  return address.startsWith('::ffff:') ? address.slice(7) : address;
}
