// One client socket: the handshake, then transmission requests carried out on the export's volume.
// Protocol decisions live in src/protocol/; this file only moves bytes and calls the volume.
//
// Backpressure: each request is admitted only when this connection's account in the server's
// IoBudget has room for what it costs (see io-budget.ts); a request not admitted yet is held by
// the decoder, the socket stops reading, and decoding goes on when bytes are given back, the
// socket drains, or the pool has room. All decoding runs in one loop (`pump`), never by re-entry:
// completions that free room while the loop runs only ask it to go round again.
//
// TLS (after STARTTLS) swaps the socket under the connection for a TLS one (`startTls`); nothing
// else here knows. A TLS socket is read through 'data' events: `onread` does not reach it.
import type { Socket } from 'node:net';
import { AllocState, BASE_ALLOCATION_ID, Cmd, CmdFlag, NbdErr, TransmissionFlag } from '../protocol/constants.js';
import { nbdErrName, nbdErrno, ProtocolViolation } from '../protocol/errors.js';
import { Handshake, type Negotiated } from '../protocol/handshake.js';
import {
  blockStatusReply,
  holeChunk,
  readReplyHeaderSize,
  simpleReply,
  structuredDone,
  structuredError,
  writeReadReplyHeader,
} from '../protocol/replies.js';
import { RequestDecoder, type RequestSink } from '../protocol/request-decoder.js';
import type { Request } from '../protocol/requests.js';
import type { Logger } from '../log.js';
import type { Extent, Volume } from '../volume/volume.js';
import type { ExportRegistry } from './exports.js';
import type { SlotPool } from '../hotpath/index.js';
import type { BudgetAccount, IoBudget } from './io-budget.js';
import type { NbdTls, TlsPeer } from '../security/nbd-tls.js';

/** Reads at least this long are checked for holes and answered with OFFSET_HOLE chunks. */
const SPARSE_READ_MIN = 256 * 1024;
/** Extents per BLOCK_STATUS reply, and per sparse read. */
const MAX_EXTENTS = 1024;
/** A client must finish the handshake within this time (as qemu-nbd's --handshake-limit). */
const HANDSHAKE_LIMIT_MS = 10_000;
/**
 * Stop admitting requests once this many reply bytes wait in the socket's send queue. Far above
 * Node's 16 KiB highWaterMark on purpose: pausing after every large READ reply would stall the pipeline.
 */
const MAX_QUEUED_REPLY_BYTES = 4 * 1024 * 1024;
/** A WRITE payload with at least this much still to come is read straight into its buffer. */
const DIRECT_PAYLOAD_MIN = 64 * 1024;
/** A BLOCK_STATUS reply: header, context id and up to MAX_EXTENTS descriptors. */
const BLOCK_STATUS_REPLY = 32 + 8 * MAX_EXTENTS;
const EMPTY = Buffer.alloc(0);

/** Bytes a request holds while in flight: what it allocates, or what its reply holds until sent. */
export function requestCost(req: Request): number {
  switch (req.type) {
    case Cmd.READ:
      return readReplyHeaderSize(true) + req.length;
    case Cmd.WRITE:
      return req.length;
    case Cmd.BLOCK_STATUS:
      return BLOCK_STATUS_REPLY;
    default:
      return 0; // FLUSH, TRIM, WRITE_ZEROES, CACHE (a posix_fadvise hint), DISC: a 16-byte reply (they count as requests in flight)
  }
}

export interface ConnectionHost {
  readonly exports: ExportRegistry;
  /** Payload and READ reply buffers: WASM-memory slots, reused. */
  readonly buffers: SlotPool;
  /** Shared by all connections: request bytes in flight across the server. */
  readonly budget: IoBudget;
  /** A client that takes no reply bytes for this long while replies wait is dropped. */
  readonly sendTimeoutMs: number;
  /** NBD over TLS; undefined when it is off. */
  readonly tls: NbdTls | undefined;
  isShuttingDown(): boolean;
  /** The connection is closed: forget it. */
  closed(conn: Connection): void;
}

export class Connection implements RequestSink {
  private handshake: Handshake | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private decoder: RequestDecoder | undefined;
  private volume: Volume | undefined;
  private negotiated: Negotiated | undefined;
  private readonly account: BudgetAccount;
  private disconnecting = false;
  private writeBlocked = false;
  /** The socket is corked until the end of this event-loop turn (see `send`). */
  private replyCorked = false;
  /** Received bytes not decoded yet (owned: never a view of the shared receive buffer). */
  private backlog: Buffer | undefined;
  /** True while `pump` runs: replies it produces leave together, and nothing re-enters it. */
  private pumping = false;
  /** Room was freed while `pump` ran: it goes round once more before it stops. */
  private pumpAgain = false;
  private idleWaiters: Array<() => void> = [];
  private requests = 0;
  private errors = 0;
  /** STARTTLS was acknowledged: TLS starts once the decoding loop is done (`startTls`). */
  private tlsRequested = false;
  /** The TLS handshake runs: the socket belongs to it, and nothing is read or paused here. */
  private tlsStarting = false;
  private readonly onDrain = (): void => {
    this.writeBlocked = false;
    this.pump();
  };
  private readonly onError = (err: Error): void => this.log.debug({ err }, 'socket error');
  private readonly onSocketClose = (): void => this.onClose();
  /** No read or write activity for the send timeout while replies wait: the client stopped reading. */
  private readonly onSendTimeout = (): void => {
    if (this.socket.writableLength === 0) return; // idle, with nothing to send: that is allowed
    this.log.warn({ sendTimeoutS: this.host.sendTimeoutMs / 1000, unsentBytes: this.socket.writableLength }, 'client took no reply bytes within the send timeout, dropping connection');
    this.socket.destroy();
  };

  constructor(
    private socket: Socket,
    private readonly host: ConnectionHost,
    private readonly log: Logger,
  ) {
    this.account = host.budget.account(() => this.pump());
    socket.setNoDelay(true);
    this.listen(socket);
    this.handshake = new Handshake(host.exports, () => host.isShuttingDown(), host.tls?.mode ?? 'off');
    this.handshakeTimer = setTimeout(() => {
      this.log.warn({ limitMs: HANDSHAKE_LIMIT_MS, tlsHandshake: this.tlsStarting }, 'handshake not finished in time, dropping connection');
      this.disconnecting = true;
      this.socket.destroy();
    }, HANDSHAKE_LIMIT_MS);
    this.send(Handshake.greeting());
  }

  /** Is this connection serving `volume` (it negotiated its export)? */
  serves(volume: Volume): boolean {
    return this.volume === volume;
  }

  /**
   * Ends the connection now (the server's reason: its volume is deleted or resized online with
   * --force): requests in flight still finish on the volume (idle() says when), their replies go
   * nowhere.
   */
  drop(reason: string): void {
    this.log.warn({ reason }, 'dropping connection');
    this.disconnecting = true;
    this.socket.destroy();
  }

  /** Resolves when no request is in flight (used by graceful shutdown). */
  idle(): Promise<void> {
    if (this.account.requests === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private listen(socket: Socket): void {
    socket.on('drain', this.onDrain);
    socket.on('error', this.onError);
    socket.on('close', this.onSocketClose);
    socket.setTimeout(this.host.sendTimeoutMs, this.onSendTimeout);
  }

  private unlisten(socket: Socket): void {
    socket.off('drain', this.onDrain);
    socket.off('error', this.onError);
    socket.off('close', this.onSocketClose);
    socket.setTimeout(0, this.onSendTimeout);
  }

  /**
   * Hands the socket to the TLS handshake (the ACK of STARTTLS is already written to it). On
   * success the TLS socket takes its place; a failure ends this connection only, logged once.
   * The handshake timer still runs: a TLS handshake that never ends is dropped with it.
   */
  private startTls(): void {
    this.tlsRequested = false;
    this.tlsStarting = true;
    const plain = this.socket;
    this.unlisten(plain);
    this.host.tls!.upgrade(plain, (err, peer) => {
      this.tlsStarting = false;
      if (err) {
        // Dropped already by the handshake timer: that was logged.
        if (!this.disconnecting) this.log.warn({ reason: err.message }, 'TLS handshake failed, dropping connection');
        this.disconnecting = true;
        return this.onClose();
      }
      this.secured(peer!);
    });
  }

  private secured(peer: TlsPeer): void {
    this.socket = peer.socket;
    this.listen(peer.socket);
    // Decrypted bytes are fresh buffers of their own; `receive` treats them as it does shared ones.
    peer.socket.on('data', (chunk: Buffer) => this.receive(chunk));
    this.log.info({ tlsProtocol: peer.protocol, cipher: peer.cipher, pskIdentity: peer.identity }, 'TLS started');
    this.updateReading();
  }

  /** Ends the connection once in-flight requests have been answered. */
  async close(): Promise<void> {
    await this.idle();
    this.socket.end();
    // A client that never closes its side must not hold the process open.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  /** Bytes from the client, in the shared receive buffer: only valid during the call. */
  receive(chunk: Buffer): void {
    if (this.disconnecting) return;
    if (this.backlog || this.pumping) {
      // Reading was already asked to stop (one more read can land): keep the bytes in order.
      this.backlog = this.backlog ? Buffer.concat([this.backlog, chunk]) : Buffer.from(chunk);
      return this.pump();
    }
    this.pump(chunk);
  }

  /**
   * Where the next read may go instead of the shared receive buffer: the rest of a large WRITE
   * payload (64 KiB or more to come), so its bytes land in the payload buffer without a copy.
   */
  directTarget(): Buffer | undefined {
    if (this.disconnecting || this.backlog) return undefined;
    return this.decoder?.payloadTarget(DIRECT_PAYLOAD_MIN);
  }

  /** `n` payload bytes were read straight into the region `directTarget` gave. */
  receiveDirect(n: number): void {
    if (this.disconnecting) return;
    this.pump(undefined, n);
  }

  /**
   * Decodes all that can be decoded now — `fresh` bytes from the socket (or `direct` payload
   * bytes already in place), then the backlog while requests are admitted — in one loop. Called
   * again while it runs (a request completed at once and freed room), it only asks the loop to go
   * round again. Whatever goes wrong in it ends this connection only, never the process.
   */
  private pump(fresh?: Buffer, direct = 0): void {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    if (this.socket.destroyed) return;
    this.pumping = true;
    this.socket.cork();
    try {
      if (direct > 0) this.decoder!.payloadArrived(direct);
      else if (fresh) {
        const used = this.decode(fresh);
        if (used < fresh.length) this.backlog = Buffer.from(fresh.subarray(used)); // a copy: the receive buffer is reused
      }
      do {
        this.pumpAgain = false;
        while (!this.disconnecting && (this.backlog || this.decoder?.holding) && this.decodeBacklog());
      } while (this.pumpAgain && !this.disconnecting);
    } catch (err) {
      this.dropOnError(err);
    } finally {
      this.pumping = false;
      this.socket.uncork();
    }
    // After the uncork, so the STARTTLS ACK has gone to the socket before TLS takes it over.
    if (this.tlsRequested) this.startTls();
    this.updateReading();
  }

  /** Decodes the backlog (or retries a held request); true if anything moved. */
  private decodeBacklog(): boolean {
    const bytes = this.backlog ?? EMPTY;
    this.backlog = undefined;
    const wasHolding = this.decoder?.holding ?? false;
    const used = this.decode(bytes);
    if (used < bytes.length) this.backlog = bytes.subarray(used);
    return used > 0 || (wasHolding && !this.decoder!.holding);
  }

  /** Bytes to the handshake or the request decoder; returns how many were used. */
  private decode(bytes: Buffer): number {
    if (this.decoder) return this.decoder.feed(bytes);
    this.onHandshakeData(bytes);
    return bytes.length;
  }

  private dropOnError(err: unknown): void {
    if (err instanceof ProtocolViolation) this.log.warn({ reason: err.message }, 'protocol violation, dropping connection');
    else this.log.error({ err }, 'internal error while handling a request, dropping connection');
    this.backlog = undefined;
    this.disconnecting = true;
    this.socket.destroy();
  }

  /** A completion callback that cannot take the process down: an error in it ends this connection. */
  private guarded<A extends unknown[]>(fn: (...args: A) => void): (...args: A) => void {
    return (...args: A) => {
      try {
        fn(...args);
      } catch (err) {
        this.dropOnError(err);
      }
    };
  }

  /** Decoder: may this request start now? Refused ones cost nothing; the rest wait for room in the budget. */
  admit(req: Request, err: NbdErr): boolean {
    if (this.disconnecting) return false; // nothing may follow NBD_CMD_DISC
    if (this.writeBlocked) return false; // the client is not taking its replies: take no more requests
    if (err !== NbdErr.OK) return true;
    return this.account.tryCharge(requestCost(req));
  }

  private onHandshakeData(chunk: Buffer): void {
    const step = this.handshake!.receive(chunk);
    for (const b of step.out) this.send(b);
    const o = step.outcome;
    if (o.kind === 'close') {
      if (o.clean) this.log.info({ reason: o.reason }, 'handshake ended');
      else this.log.warn({ reason: o.reason }, 'handshake failed, dropping connection');
      this.handshake = undefined;
      this.disconnecting = true;
      // end(), not destroy(): a last error reply (too many options) still reaches the client.
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 2000).unref();
    } else if (o.kind === 'starttls') {
      this.tlsRequested = true;
    } else if (o.kind === 'ready') {
      this.handshake = undefined;
      this.startTransmission(o.negotiated);
      if (o.rest.length > 0) this.backlog = o.rest; // the handshake's own copy; the pump loop decodes it next
    }
  }

  private startTransmission(n: Negotiated): void {
    clearTimeout(this.handshakeTimer);
    const entry = this.host.exports.entry(n.export.name)!;
    this.negotiated = n;
    this.volume = entry.volume;
    this.decoder = new RequestDecoder(
      {
        size: n.export.size,
        readOnly: entry.volume.capabilities.readOnly,
        structuredReplies: n.structuredReplies,
        baseAllocation: n.baseAllocation,
        fastZero: (n.transmissionFlags & TransmissionFlag.SEND_FAST_ZERO) !== 0,
      },
      this,
    );
    this.log.info(
      { export: n.export.name, structuredReplies: n.structuredReplies, baseAllocation: n.baseAllocation },
      'client attached',
    );
  }

  allocPayload(length: number): Buffer {
    // Its cost was charged when the WRITE was admitted.
    return this.host.buffers.acquire(length);
  }

  onRequest(req: Request, err: NbdErr, payload: Buffer | null): void {
    this.requests++;
    if (err !== NbdErr.OK) return this.refuse(req, err, 'request refused by validation');
    // Admitted: from here on every path ends in `end(req)`, which gives its cost back.
    if (this.host.isShuttingDown() && req.type !== Cmd.DISC) {
      this.refuse(req, NbdErr.ESHUTDOWN, 'server is shutting down');
      return this.end(req);
    }
    const v = this.volume!;
    const fua = (req.flags & CmdFlag.FUA) !== 0;
    switch (req.type) {
      case Cmd.READ:
        return this.read(req);
      case Cmd.WRITE:
        return v.write(
          payload!,
          req.offset,
          fua,
          this.guarded((e: Error | null) => {
            this.host.buffers.release(payload!);
            this.finish(req, e);
          }),
        );
      case Cmd.FLUSH:
        return v.flush(this.finisher(req));
      case Cmd.TRIM:
        return v.trim(req.offset, req.length, fua, this.finisher(req));
      case Cmd.WRITE_ZEROES:
        return v.zero(
          req.offset,
          req.length,
          { noHole: (req.flags & CmdFlag.NO_HOLE) !== 0, fastZero: (req.flags & CmdFlag.FAST_ZERO) !== 0, fua },
          this.finisher(req),
        );
      case Cmd.CACHE:
        return v.cache(req.offset, req.length, this.finisher(req));
      case Cmd.BLOCK_STATUS:
        return this.blockStatus(req);
      case Cmd.DISC:
        this.end(req);
        return this.disconnect();
    }
  }

  private read(req: Request): void {
    const structured = this.negotiated!.structuredReplies;
    const view = this.volume!.view?.(req.offset, req.length);
    if (view) {
      // Zero-copy: the header, then the data straight from the volume's mapping.
      const header = Buffer.allocUnsafe(readReplyHeaderSize(structured));
      writeReadReplyHeader(header, structured, req, req.offset, req.length, true);
      this.send(header);
      return this.send(view, () => this.end(req));
    }
    if (structured && req.length >= SPARSE_READ_MIN && (req.flags & CmdFlag.DF) === 0) return this.readSparse(req);
    const hs = readReplyHeaderSize(structured);
    const reply = this.host.buffers.acquire(hs + req.length);
    this.volume!.read(
      reply.subarray(hs),
      req.offset,
      this.guarded((e: Error | null) => {
        if (e) {
          this.host.buffers.release(reply);
          return this.fail(req, e);
        }
        writeReadReplyHeader(reply, structured, req, req.offset, req.length, true);
        // In flight until sent: queued replies count against the budget too.
        this.send(reply, () => {
          this.host.buffers.release(reply);
          this.end(req);
        });
      }),
    );
  }

  /** A large structured read: holes go out as OFFSET_HOLE chunks, data as OFFSET_DATA chunks. */
  private readSparse(req: Request): void {
    this.volume!.extents(
      req.offset,
      req.length,
      MAX_EXTENTS,
      this.guarded((e: Error | null, extents: Extent[]) => {
        if (e) return this.fail(req, e);
        const covered = extents.reduce((sum, x) => sum + x.length, 0);
        // Whatever the extent list did not reach is read as data.
        if (covered < req.length) extents.push({ length: req.length - covered, flags: 0 });
        this.sendExtents(req, extents, 0, req.offset);
      }),
    );
  }

  private sendExtents(req: Request, extents: Extent[], i: number, offset: number): void {
    for (; i < extents.length; i++) {
      const x = extents[i]!;
      if ((x.flags & AllocState.HOLE) === 0) break; // data: needs a read
      this.send(holeChunk(req, offset, x.length, false));
      offset += x.length;
    }
    if (i === extents.length) return this.send(structuredDone(req), () => this.end(req));
    const len = extents[i]!.length;
    const hs = readReplyHeaderSize(true);
    const chunk = this.host.buffers.acquire(hs + len);
    this.volume!.read(
      chunk.subarray(hs),
      offset,
      this.guarded((e: Error | null) => {
        if (e) {
          this.host.buffers.release(chunk);
          return this.fail(req, e);
        }
        const last = i === extents.length - 1;
        writeReadReplyHeader(chunk, true, req, offset, len, last);
        // Chunks leave in order: once the last is sent, the whole reply is out of our memory.
        this.send(chunk, () => {
          this.host.buffers.release(chunk);
          if (last) this.end(req);
        });
        if (!last) this.sendExtents(req, extents, i + 1, offset + len);
      }),
    );
  }

  private blockStatus(req: Request): void {
    const max = (req.flags & CmdFlag.REQ_ONE) !== 0 ? 1 : MAX_EXTENTS;
    this.volume!.extents(
      req.offset,
      req.length,
      max,
      this.guarded((e: Error | null, extents: Extent[]) => {
        if (e) return this.fail(req, e);
        this.send(
          blockStatusReply(
            req,
            BASE_ALLOCATION_ID,
            extents.map((x) => x.length),
            extents.map((x) => x.flags),
            extents.length,
          ),
        );
        this.end(req);
      }),
    );
  }

  private disconnect(): void {
    this.disconnecting = true;
    this.log.debug('client sent NBD_CMD_DISC');
    void this.close();
  }

  /** Replies to a request that was never started. */
  private refuse(req: Request, err: NbdErr, reason: string): void {
    this.errors++;
    this.log.debug({ type: req.type, offset: req.offset, length: req.length, flags: req.flags, error: nbdErrName(err) }, reason);
    this.sendError(req, err, reason);
  }

  /** The completion of a request answered by a simple reply. */
  private finisher(req: Request): (e: Error | null) => void {
    return this.guarded((e: Error | null) => this.finish(req, e));
  }

  private finish(req: Request, e: Error | null): void {
    if (e) return this.fail(req, e);
    this.send(simpleReply(req, NbdErr.OK));
    this.end(req);
  }

  /** A started request failed: log the real cause, send the wire code. */
  private fail(req: Request, e: Error): void {
    const code = nbdErrno(e);
    this.errors++;
    this.log.warn({ err: e, type: req.type, offset: req.offset, length: req.length, error: nbdErrName(code) }, 'request failed');
    this.sendError(req, code, e.message);
    this.end(req);
  }

  private sendError(req: Request, err: NbdErr, message: string): void {
    // READ and BLOCK_STATUS answers must be structured once structured replies are on.
    const structuredOnly = req.type === Cmd.READ || req.type === Cmd.BLOCK_STATUS;
    this.send(this.negotiated?.structuredReplies && structuredOnly ? structuredError(req, err, message) : simpleReply(req, err));
  }

  /** Queues `b` for the client; `onSent` runs once the socket is done with it (sent or failed). */
  private send(b: Buffer, onSent?: () => void): void {
    if (this.socket.destroyed || !this.socket.writable) return onSent?.();
    // Replies completed outside the decoding loop (a mirrored write's peer ACKs arrive in
    // batches on the peer link) also leave together: one writev per event-loop turn, not one
    // write per reply.
    if (!this.pumping && !this.replyCorked) {
      this.replyCorked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.replyCorked = false;
        this.socket.uncork();
      });
    }
    if (onSent) this.socket.write(b, () => onSent());
    else this.socket.write(b);
    if (!this.writeBlocked && this.socket.writableLength > MAX_QUEUED_REPLY_BYTES) {
      this.writeBlocked = true;
      this.updateReading();
    }
  }

  /** An admitted request is over (answered, or its connection gone): its cost goes back. */
  private end(req: Request): void {
    this.account.release(requestCost(req));
    if (this.account.requests === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
    // Room for a held request: decode on (or, inside the loop, ask it to go round again).
    if (this.decoder?.holding || this.backlog) this.pump();
  }

  /** The socket reads while requests can be taken, and stops while one is held or bytes wait. */
  private updateReading(): void {
    if (this.socket.destroyed || this.tlsStarting) return;
    const pause = this.writeBlocked || this.backlog !== undefined || this.decoder?.holding === true;
    if (pause && !this.socket.isPaused()) this.socket.pause();
    else if (!pause && this.socket.isPaused()) this.socket.resume();
  }

  private onClose(): void {
    clearTimeout(this.handshakeTimer);
    this.host.closed(this);
    this.account.close();
    if (this.decoder?.midRequest) this.log.warn('client disconnected in the middle of a request');
    this.log.info({ requests: this.requests, errors: this.errors, export: this.negotiated?.export.name }, 'connection closed');
  }
}
