// One client socket: the handshake, then transmission requests carried out on the export's volume.
// Protocol decisions live in src/protocol/; this file only moves bytes and calls the volume.
//
// Backpressure: reading stops while the socket's send buffer is full or too many bytes of
// requests are in flight, so a fast writer cannot make the server buffer without bound.
import type { Socket } from 'node:net';
import { AllocState, BASE_ALLOCATION_ID, Cmd, CmdFlag, NbdErr } from '../protocol/constants.js';
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
import type { IoBudget } from './io-budget.js';

/** Reads at least this long are checked for holes and answered with OFFSET_HOLE chunks. */
const SPARSE_READ_MIN = 256 * 1024;
/** Extents per BLOCK_STATUS reply, and per sparse read. */
const MAX_EXTENTS = 1024;
/** A client must finish the handshake within this time (as qemu-nbd's --handshake-limit). */
const HANDSHAKE_LIMIT_MS = 10_000;
/** Pause reading once this connection has this many request bytes (payloads, read replies) in flight. */
const MAX_INFLIGHT_BYTES = 8 * 1024 * 1024;
/**
 * Pause reading once this many reply bytes wait in the socket's send queue. Far above Node's
 * 16 KiB highWaterMark on purpose: pausing after every large READ reply would stall the pipeline.
 */
const MAX_QUEUED_REPLY_BYTES = 4 * 1024 * 1024;
/** A WRITE payload with at least this much still to come is read straight into its buffer. */
const DIRECT_PAYLOAD_MIN = 64 * 1024;

export interface ConnectionHost {
  readonly exports: ExportRegistry;
  /** Payload and READ reply buffers: WASM-memory slots, reused. */
  readonly buffers: SlotPool;
  /** Shared by all connections: in-flight bytes across the server. */
  readonly budget: IoBudget;
  isShuttingDown(): boolean;
}

export class Connection implements RequestSink {
  private handshake: Handshake | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private decoder: RequestDecoder | undefined;
  private volume: Volume | undefined;
  private negotiated: Negotiated | undefined;
  private inFlight = 0;
  private inFlightBytes = 0;
  private disconnecting = false;
  private writeBlocked = false;
  /** The socket is corked until the end of this event-loop turn (see `send`). */
  private replyCorked = false;
  /** Stop taking new requests (backpressure); the socket is paused while this or a backlog holds. */
  private readPaused = false;
  /** Received bytes not yet decoded because reading was paused at a request boundary. */
  private backlog: Buffer | undefined;
  /** True while bytes are being decoded (updateReading must not re-enter the decoder then). */
  private feeding = false;
  private idleWaiters: Array<() => void> = [];
  private requests = 0;
  private errors = 0;

  constructor(
    private readonly socket: Socket,
    private readonly host: ConnectionHost,
    private readonly log: Logger,
  ) {
    socket.setNoDelay(true);
    socket.on('drain', () => {
      this.writeBlocked = false;
      this.updateReading();
    });
    socket.on('error', (err) => this.log.debug({ err }, 'socket error'));
    socket.on('close', () => this.onClose());
    this.handshake = new Handshake(host.exports, () => host.isShuttingDown());
    this.handshakeTimer = setTimeout(() => {
      this.log.warn({ limitMs: HANDSHAKE_LIMIT_MS }, 'handshake not finished in time, dropping connection');
      this.socket.destroy();
    }, HANDSHAKE_LIMIT_MS);
    this.send(Handshake.greeting());
  }

  /** Resolves when no request is in flight (used by graceful shutdown). */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Ends the connection once in-flight requests have been answered. */
  async close(): Promise<void> {
    await this.idle();
    this.socket.end();
    // A client that never closes its side must not hold the process open.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  /** Bytes from the client; `chunk` is only valid during the call. */
  receive(chunk: Buffer): void {
    if (this.disconnecting) return;
    if (this.backlog) {
      // Reading was already asked to stop; keep the bytes in order behind the backlog.
      this.backlog = Buffer.concat([this.backlog, chunk]);
      return;
    }
    this.consume(chunk, true);
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
    this.decoding(() => this.decoder!.payloadArrived(n));
  }

  /**
   * Runs bytes through the handshake or the decoder. What the decoder leaves (it stops at a
   * request boundary under backpressure) becomes the backlog, copied if it is a view of the
   * reused receive buffer.
   */
  private consume(bytes: Buffer, isReceiveBuffer: boolean): void {
    this.decoding(() => {
      if (!this.decoder) this.onHandshakeData(bytes);
      else {
        const used = this.decoder.feed(bytes);
        if (used < bytes.length) {
          const rest = bytes.subarray(used);
          this.backlog = isReceiveBuffer ? Buffer.from(rest) : rest;
        }
      }
    });
  }

  /** Runs `work` on received bytes: replies it produces leave in one writev; a failure ends this connection only. */
  private decoding(work: () => void): void {
    this.socket.cork();
    this.feeding = true;
    try {
      work();
    } catch (err) {
      // Whatever goes wrong with one client's bytes ends that connection only, never the process.
      if (err instanceof ProtocolViolation) this.log.warn({ reason: err.message }, 'protocol violation, dropping connection');
      else this.log.error({ err }, 'internal error while handling a request, dropping connection');
      this.backlog = undefined;
      this.disconnecting = true;
      this.socket.destroy();
    } finally {
      this.feeding = false;
      this.socket.uncork();
    }
    this.updateReading();
  }

  wantsRequests(): boolean {
    return !this.readPaused && !this.disconnecting;
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
      if (o.clean) this.socket.end();
      else this.socket.destroy();
    } else if (o.kind === 'ready') {
      this.handshake = undefined;
      this.startTransmission(o.negotiated);
      if (o.rest.length > 0) this.backlog = o.rest; // handled by updateReading once consume returns
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
      },
      this,
    );
    this.log.info(
      { export: n.export.name, structuredReplies: n.structuredReplies, baseAllocation: n.baseAllocation },
      'client attached',
    );
  }

  allocPayload(length: number): Buffer {
    // Counted against the in-flight budget once the WRITE starts (one payload assembles at a time).
    return this.host.buffers.acquire(length);
  }

  onRequest(req: Request, err: NbdErr, payload: Buffer | null): void {
    if (this.disconnecting) return; // nothing may follow NBD_CMD_DISC
    this.requests++;
    if (err !== NbdErr.OK) return this.refuse(req, err, 'request refused by validation');
    if (this.host.isShuttingDown() && req.type !== Cmd.DISC) return this.refuse(req, NbdErr.ESHUTDOWN, 'server is shutting down');
    const v = this.volume!;
    const fua = (req.flags & CmdFlag.FUA) !== 0;
    switch (req.type) {
      case Cmd.READ:
        return this.read(req);
      case Cmd.WRITE:
        this.begin(payload!.length);
        return v.write(payload!, req.offset, fua, (e) => {
          this.host.buffers.release(payload!);
          this.finish(req, e, payload!.length);
        });
      case Cmd.FLUSH:
        this.begin(0);
        return v.flush((e) => this.finish(req, e, 0));
      case Cmd.TRIM:
        this.begin(0);
        return v.trim(req.offset, req.length, fua, (e) => this.finish(req, e, 0));
      case Cmd.WRITE_ZEROES:
        this.begin(0);
        return v.zero(
          req.offset,
          req.length,
          { noHole: (req.flags & CmdFlag.NO_HOLE) !== 0, fastZero: (req.flags & CmdFlag.FAST_ZERO) !== 0, fua },
          (e) => this.finish(req, e, 0),
        );
      case Cmd.CACHE:
        this.begin(0);
        return v.cache(req.offset, req.length, (e) => this.finish(req, e, 0));
      case Cmd.BLOCK_STATUS:
        return this.blockStatus(req);
      case Cmd.DISC:
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
      return this.send(view);
    }
    if (structured && req.length >= SPARSE_READ_MIN && (req.flags & CmdFlag.DF) === 0) return this.readSparse(req);
    const hs = readReplyHeaderSize(structured);
    const reply = this.host.buffers.acquire(hs + req.length);
    this.begin(reply.length);
    this.volume!.read(reply.subarray(hs), req.offset, (e) => {
      if (e) {
        this.host.buffers.release(reply);
        return this.fail(req, e, reply.length);
      }
      writeReadReplyHeader(reply, structured, req, req.offset, req.length, true);
      // In flight until sent: queued replies count against the budget too.
      this.send(reply, () => {
        this.host.buffers.release(reply);
        this.end(reply.length);
      });
    });
  }

  /** A large structured read: holes go out as OFFSET_HOLE chunks, data as OFFSET_DATA chunks. */
  private readSparse(req: Request): void {
    this.begin(req.length);
    this.volume!.extents(req.offset, req.length, MAX_EXTENTS, (e, extents) => {
      if (e) return this.fail(req, e, req.length);
      const covered = extents.reduce((sum, x) => sum + x.length, 0);
      // Whatever the extent list did not reach is read as data.
      if (covered < req.length) extents.push({ length: req.length - covered, flags: 0 });
      this.sendExtents(req, extents, 0, req.offset);
    });
  }

  private sendExtents(req: Request, extents: Extent[], i: number, offset: number): void {
    for (; i < extents.length; i++) {
      const x = extents[i]!;
      if ((x.flags & AllocState.HOLE) === 0) break; // data: needs a read
      this.send(holeChunk(req, offset, x.length, false));
      offset += x.length;
    }
    if (i === extents.length) return this.send(structuredDone(req), () => this.end(req.length));
    const len = extents[i]!.length;
    const hs = readReplyHeaderSize(true);
    const chunk = this.host.buffers.acquire(hs + len);
    this.volume!.read(chunk.subarray(hs), offset, (e) => {
      if (e) {
        this.host.buffers.release(chunk);
        return this.fail(req, e, req.length);
      }
      const last = i === extents.length - 1;
      writeReadReplyHeader(chunk, true, req, offset, len, last);
      // Chunks leave in order: once the last is sent, the whole reply is out of our memory.
      this.send(chunk, () => {
        this.host.buffers.release(chunk);
        if (last) this.end(req.length);
      });
      if (!last) this.sendExtents(req, extents, i + 1, offset + len);
    });
  }

  private blockStatus(req: Request): void {
    const max = (req.flags & CmdFlag.REQ_ONE) !== 0 ? 1 : MAX_EXTENTS;
    this.begin(0);
    this.volume!.extents(req.offset, req.length, max, (e, extents) => {
      if (e) return this.fail(req, e, 0);
      this.send(
        blockStatusReply(
          req,
          BASE_ALLOCATION_ID,
          extents.map((x) => x.length),
          extents.map((x) => x.flags),
          extents.length,
        ),
      );
      this.end(0);
    });
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

  private finish(req: Request, e: Error | null, bytes: number): void {
    if (e) return this.fail(req, e, bytes);
    this.send(simpleReply(req, NbdErr.OK));
    this.end(bytes);
  }

  /** A started request failed: log the real cause, send the wire code. */
  private fail(req: Request, e: Error, bytes: number): void {
    const code = nbdErrno(e);
    this.errors++;
    this.log.warn({ err: e, type: req.type, offset: req.offset, length: req.length, error: nbdErrName(code) }, 'request failed');
    this.sendError(req, code, e.message);
    this.end(bytes);
  }

  private sendError(req: Request, err: NbdErr, message: string): void {
    // READ and BLOCK_STATUS answers must be structured once structured replies are on.
    const structuredOnly = req.type === Cmd.READ || req.type === Cmd.BLOCK_STATUS;
    this.send(this.negotiated?.structuredReplies && structuredOnly ? structuredError(req, err, message) : simpleReply(req, err));
  }

  /** Queues `b` for the client; `onSent` runs once the socket is done with it (sent or failed). */
  private send(b: Buffer, onSent?: () => void): void {
    if (this.socket.destroyed || !this.socket.writable) return onSent?.();
    // Replies completed outside the receive handler (a mirrored write's peer ACKs arrive in
    // batches on the peer link) also leave together: one writev per event-loop turn, not one
    // write per reply.
    if (!this.feeding && !this.replyCorked) {
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

  private begin(bytes: number): void {
    this.inFlight++;
    if (bytes > 0) this.track(bytes);
  }

  private end(bytes: number): void {
    this.inFlight--;
    if (bytes > 0) this.track(-bytes);
    if (this.inFlight === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  private track(delta: number): void {
    this.inFlightBytes += delta;
    if (delta > 0) this.host.budget.take(delta);
    else this.host.budget.give(-delta);
    this.updateReading();
  }

  private readonly retryReading = (): void => this.updateReading();

  private updateReading(): void {
    const budgetSpent = this.host.budget.exhausted();
    this.readPaused = this.writeBlocked || this.inFlightBytes > MAX_INFLIGHT_BYTES || budgetSpent;
    if (this.readPaused && budgetSpent) this.host.budget.whenAvailable(this.retryReading);
    if (this.feeding || this.socket.destroyed) return;
    if (!this.readPaused && this.backlog) {
      const backlog = this.backlog;
      this.backlog = undefined;
      return this.consume(backlog, false); // ends by calling updateReading again
    }
    const pause = this.readPaused || this.backlog !== undefined;
    if (pause && !this.socket.isPaused()) this.socket.pause();
    else if (!pause && this.socket.isPaused()) this.socket.resume();
  }

  private onClose(): void {
    clearTimeout(this.handshakeTimer);
    if (this.decoder?.midRequest) this.log.warn('client disconnected in the middle of a request');
    this.log.info({ requests: this.requests, errors: this.errors, export: this.negotiated?.export.name }, 'connection closed');
  }
}
