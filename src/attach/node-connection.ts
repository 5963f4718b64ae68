// One NBD client connection from the attach endpoint to one node, for one volume: the fixed-
// newstyle handshake (structured replies, base:allocation, GO), then requests pipelined and
// answered in any order. Replies are decoded by the protocol's ReplyDecoder; READ data lands in
// the buffer the local client's request gave (read straight into it for large chunks, as the
// server receives WRITE payloads). What happens to requests when the connection fails is the
// caller's business (path.ts / attach-volume.ts): this file only moves bytes.
import net from 'node:net';
import { BASE_ALLOCATION, Cmd, IHAVEOPT, NBD_MAGIC, Opt, Rep, REQUEST_HEADER_SIZE } from '../protocol/constants.js';
import { decodeOptionReplyHeader, goData, metaContextData, optionBytes, OPTION_REPLY_HEADER_SIZE, parseExportInfo, type ExportInfo } from '../protocol/client-options.js';
import { ProtocolViolation } from '../protocol/errors.js';
import { ReplyDecoder, type ReplySink, type ReplyTarget } from '../protocol/reply-decoder.js';
import { encodeRequestHeader } from '../protocol/requests.js';
import { onReadOptions } from '../server/receive.js';
import type { HostPort } from '../config/units.js';
import type { Extent } from '../volume/volume.js';
import type { NbdTlsClient } from '../security/nbd-tls-client.js';

/** A reply chunk of at least this much still to come is read straight into the request's buffer. */
const DIRECT_DATA_MIN = 64 * 1024;
/** Option replies a handshake may take (a server that never sends the final ACK is dropped). */
const MAX_OPTION_REPLIES = 64;
/** Longest option reply we accept during the handshake. */
const MAX_OPTION_REPLY = 64 * 1024;

/** A request forwarded to a node. `seq` is its arrival order at the attach endpoint. */
export interface Forwarded extends ReplyTarget {
  readonly seq: number;
  readonly flags: number;
  /** WRITE: the payload; READ: where the data goes. */
  readonly data: Buffer | undefined;
  /** When it was last sent (ms, monotonic enough: Date.now()). */
  sentAt: number;
  /** Times it was sent again to a node after a path failed. */
  resent: number;
  /** Set by the reply. */
  errno: number;
  message: string;
  extents: Extent[] | undefined;
}

export interface NodeConnectionEvents {
  /** A request's reply is complete (`op.errno` says how it ended). */
  replied(op: Forwarded): void;
  /** The connection is gone; `inFlight` are the requests that had no reply, in the order sent. */
  closed(reason: string, byPeer: boolean, inFlight: Forwarded[]): void;
}

/** Commands that change the volume's data: the ones the fail-over rule is about. */
export function changesData(type: number): boolean {
  return type === Cmd.WRITE || type === Cmd.TRIM || type === Cmd.WRITE_ZEROES;
}

/** A handshake failure: the node refused an option or does not serve the export. */
export class AttachHandshakeError extends Error {
  readonly code = 'NBD_MIRROR_ATTACH_HANDSHAKE';
}

/**
 * Bytes of the handshake, read in exact counts. The handshake is short and happens once per
 * connection, so a promise per read is fine here (never on the request path).
 */
class HandshakeReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failed: Error | undefined;

  push(b: Buffer): void {
    this.chunks.push(Buffer.from(b));
    this.have += b.length;
    this.wake();
  }

  fail(err: Error): void {
    this.failed = err;
    this.wake();
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  /** Bytes received past the handshake (a server may pipeline nothing, but be safe). */
  rest(): Buffer {
    return Buffer.concat(this.chunks);
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.have >= w.n) {
      this.waiter = undefined;
      const all = Buffer.concat(this.chunks);
      this.chunks = all.length > w.n ? [all.subarray(w.n)] : [];
      this.have -= w.n;
      w.resolve(all.subarray(0, w.n));
    } else if (this.failed) {
      this.waiter = undefined;
      w.reject(this.failed);
    }
  }
}

export class NodeConnection implements ReplySink {
  private readonly inFlight = new Map<number, Forwarded>();
  private nextCookie = 1;
  private decoder: ReplyDecoder | undefined;
  private handshake: HandshakeReader | undefined = new HandshakeReader();
  private closedReason: string | undefined;
  private baseAllocationId = 0;
  private byUs = false;
  private corked = false;
  info: ExportInfo | undefined;
  private events: NodeConnectionEvents | undefined;
  /** The plain socket, or after STARTTLS the TLS one. */
  private socket: net.Socket;
  private readonly onData = (chunk: Buffer): void => this.receive(chunk);

  private constructor(
    private readonly addr: HostPort,
    private readonly tls: NbdTlsClient | undefined,
  ) {
    // A plain connection reads into our own buffers (`onread`, as the server does); one that
    // will start TLS reads through 'data' events, which the TLS socket takes over.
    this.socket = tls
      ? net.connect({ host: addr.host, port: addr.port, noDelay: true })
      : net.connect({
          host: addr.host,
          port: addr.port,
          noDelay: true,
          onread: onReadOptions({
            onChunk: (chunk) => this.receive(chunk),
            directTarget: () => this.decoder?.dataTarget(DIRECT_DATA_MIN),
            onDirect: (n) => this.guard(() => this.decoder!.dataArrived(n)),
          }),
        });
    if (tls) this.socket.on('data', this.onData);
    this.watch(this.socket);
  }

  private watch(socket: net.Socket): void {
    socket.on('error', (err) => this.onClose(err.message));
    socket.on('close', () => this.onClose('connection closed by the node'));
    socket.on('end', () => socket.end());
  }

  /**
   * Dials `addr` and negotiates `exportName` (over TLS when `tls` is given); rejects (and closes)
   * on any failure or after `timeoutMs`. Events start once it resolves.
   */
  static async open(addr: HostPort, exportName: string, timeoutMs: number, tls?: NbdTlsClient): Promise<NodeConnection> {
    const c = new NodeConnection(addr, tls);
    const timer = setTimeout(() => c.close(`no handshake within ${timeoutMs} ms`), timeoutMs);
    try {
      await c.negotiate(exportName);
      return c;
    } catch (err) {
      c.close((err as Error).message);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Starts reporting replies and the close; call once, right after `open`. */
  listen(events: NodeConnectionEvents): void {
    this.events = events;
    if (this.closedReason !== undefined) this.onClose(this.closedReason);
  }

  get requestsInFlight(): number {
    return this.inFlight.size;
  }

  /** Some request in flight here changes data (WRITE, TRIM, WRITE_ZEROES). */
  writesInFlight(): boolean {
    for (const op of this.inFlight.values()) if (changesData(op.type)) return true;
    return false;
  }

  /** When the oldest request still unanswered was sent, or undefined when none is. */
  oldestSentAt(): number | undefined {
    for (const op of this.inFlight.values()) return op.sentAt;
    return undefined;
  }

  /** Sends a request (a WRITE with its payload); its reply comes through `replied`. */
  send(op: Forwarded): void {
    if (this.closedReason !== undefined) throw new Error('send on a closed node connection');
    const cookie = this.nextCookie++;
    this.inFlight.set(cookie, op);
    op.sentAt = Date.now();
    // Requests of one event-loop turn leave in one writev (as the server corks its replies).
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    // The payload is written as it is, never copied: the cork puts it in one writev with its header.
    const header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
    encodeRequestHeader(header, 0, { type: op.type, flags: op.flags, offset: op.offset, length: op.length, cookieHi: 0, cookieLo: cookie });
    this.socket.write(header);
    if (op.type === Cmd.WRITE) this.socket.write(op.data!);
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  /** Ends the connection now; requests in flight are handed back through `closed`. */
  close(reason: string): void {
    this.byUs = true;
    this.socket.destroy();
    this.onClose(reason);
  }

  private async negotiate(exportName: string): Promise<void> {
    const r = this.handshake!;
    const greeting = await r.read(18);
    if (greeting.readBigUInt64BE(0) !== NBD_MAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new AttachHandshakeError('not an NBD fixed-newstyle server');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3); // FIXED_NEWSTYLE | NO_ZEROES
    this.socket.write(flags);
    if (this.tls) {
      await this.option(Opt.STARTTLS);
      const plain = this.socket;
      plain.off('data', this.onData);
      const secured = await this.tls.upgrade(plain, this.addr.host);
      this.socket = secured;
      this.watch(secured);
      secured.on('data', this.onData);
    }
    await this.option(Opt.STRUCTURED_REPLY);
    const ctx = (await this.option(Opt.SET_META_CONTEXT, metaContextData(exportName, [BASE_ALLOCATION]))).find((x) => x.type === Rep.META_CONTEXT);
    if (!ctx || ctx.data.length < 4) throw new AttachHandshakeError(`the node offers no ${BASE_ALLOCATION} for "${exportName}"`);
    this.baseAllocationId = ctx.data.readUInt32BE(0);
    const infos = await this.option(Opt.GO, goData(exportName));
    this.info = parseExportInfo(infos.filter((x) => x.type === Rep.INFO).map((x) => x.data));
    this.decoder = new ReplyDecoder(this);
    this.handshake = undefined;
    const rest = r.rest();
    if (rest.length > 0) this.receive(rest);
  }

  /** One option and its replies up to the ACK; an error reply rejects with the node's message. */
  private async option(opt: Opt, data?: Buffer): Promise<Array<{ type: number; data: Buffer }>> {
    this.socket.write(optionBytes(opt, data));
    const out: Array<{ type: number; data: Buffer }> = [];
    for (let i = 0; i < MAX_OPTION_REPLIES; i++) {
      const h = decodeOptionReplyHeader(await this.handshake!.read(OPTION_REPLY_HEADER_SIZE));
      if (h.length > MAX_OPTION_REPLY) throw new ProtocolViolation(`option reply of ${h.length} bytes`);
      const body = await this.handshake!.read(h.length);
      if (h.type >= 0x80000000) throw new AttachHandshakeError(`the node refused option ${opt} (reply 0x${h.type.toString(16)}${body.length ? `: ${body.toString()}` : ''})`);
      out.push({ type: h.type, data: body });
      if (h.type === Rep.ACK) return out;
    }
    throw new ProtocolViolation('too many option replies');
  }

  private receive(chunk: Buffer): void {
    if (this.handshake) return this.handshake.push(chunk);
    this.guard(() => this.decoder?.feed(chunk));
  }

  /** A reply we cannot make sense of ends this connection (its requests go elsewhere), never the process. */
  private guard(step: () => void): void {
    try {
      step();
    } catch (err) {
      this.close(`bad reply from the node: ${(err as Error).message}`);
    }
  }

  request(cookie: number): ReplyTarget | undefined {
    return this.inFlight.get(cookie);
  }

  onExtents(cookie: number, body: Buffer): void {
    const op = this.inFlight.get(cookie)!;
    if (body.readUInt32BE(0) !== this.baseAllocationId) throw new ProtocolViolation('block status for a context we did not ask for');
    const extents: Extent[] = [];
    for (let i = 4; i < body.length; i += 8) extents.push({ length: body.readUInt32BE(i), flags: body.readUInt32BE(i + 4) });
    op.extents = extents;
  }

  onError(cookie: number, errno: number, message: string): void {
    const op = this.inFlight.get(cookie)!;
    op.errno = errno || 5; // an error chunk with 0 is still an error (EIO)
    op.message = message;
  }

  onDone(cookie: number): void {
    const op = this.inFlight.get(cookie)!;
    this.inFlight.delete(cookie);
    this.events?.replied(op);
  }

  private onClose(reason: string): void {
    if (this.closedReason === undefined) {
      this.closedReason = reason;
      this.handshake?.fail(new AttachHandshakeError(reason));
      if (!this.socket.destroyed) this.socket.destroy();
    }
    if (!this.events) return;
    const events = this.events;
    this.events = undefined;
    const left = [...this.inFlight.values()];
    this.inFlight.clear();
    events.closed(this.closedReason, !this.byUs, left);
  }
}
