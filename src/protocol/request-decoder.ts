// Streaming decoder for the transmission phase: socket chunks in, validated requests out.
// Keeps an offset into each chunk instead of concatenating. Chunks may be views of a reused
// receive buffer, so nothing keeps a reference to them: a WRITE payload is copied once into a
// buffer the sink provides. Rejected WRITEs have their payload skipped, not stored.
//
// Backpressure is per request: each decoded header is offered to the sink (`admit`), which
// knows what the request will cost; a request not admitted yet is held (nothing of it is
// allocated) and the rest of the bytes stay with the caller until `feed` is called again.
import { Cmd, NbdErr, REQUEST_HEADER_SIZE } from './constants.js';
import { decodeRequestHeader, validateRequest, type Request, type TransmissionContext } from './requests.js';

export interface RequestSink {
  /** A buffer of `length` bytes to receive a WRITE payload into. */
  allocPayload(length: number): Buffer;
  /** A complete request: `err` is OK or the code to refuse it with; `payload` only for accepted WRITEs. */
  onRequest(req: Request, err: NbdErr, payload: Buffer | null): void;
  /**
   * Asked once a header is decoded (and again on each later `feed` while it is held): true lets
   * the request go on (its payload is allocated, or it is handed to `onRequest`), false holds it.
   */
  admit(req: Request, err: NbdErr): boolean;
}

const enum State {
  /** Gathering a 28-byte header. */
  HEADER,
  /** A decoded header the sink has not admitted yet. */
  HELD,
  /** Copying a WRITE payload into its buffer. */
  PAYLOAD,
  /** Skipping the payload of a refused WRITE. */
  DISCARD,
}

export class RequestDecoder {
  private state = State.HEADER;
  /** A header split across chunks is gathered here. */
  private readonly head = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  private headFill = 0;
  private req: Request | undefined;
  private err: NbdErr = NbdErr.OK;
  private payload: Buffer | undefined;
  private payloadFill = 0;
  private remaining = 0;

  constructor(
    private readonly ctx: TransmissionContext,
    private readonly sink: RequestSink,
  ) {}

  /**
   * While a WRITE payload with at least `min` bytes still to come is being received: the part of
   * its buffer those bytes go to, so the socket can read straight into it (no second copy).
   */
  payloadTarget(min: number): Buffer | undefined {
    if (this.state !== State.PAYLOAD) return undefined;
    const payload = this.payload!;
    return payload.length - this.payloadFill >= min ? payload.subarray(this.payloadFill) : undefined;
  }

  /** `n` bytes arrived straight into the region `payloadTarget` gave. */
  payloadArrived(n: number): void {
    const payload = this.payload!;
    this.payloadFill += n;
    if (this.payloadFill === payload.length) this.complete(payload);
  }

  /** True while a request is only partly received (used to tell a clean close from a cut one). */
  get midRequest(): boolean {
    return (this.state !== State.HEADER && this.state !== State.HELD) || this.headFill !== 0;
  }

  /** True while a decoded request waits for the sink to admit it. */
  get holding(): boolean {
    return this.state === State.HELD;
  }

  /**
   * Consumes a chunk up to the first request the sink does not admit; returns the number of
   * bytes used (the caller keeps the rest and feeds it again later, an empty chunk to retry a
   * held request alone). Throws ProtocolViolation on bytes that are not a request.
   */
  feed(chunk: Buffer): number {
    let pos = 0;
    const end = chunk.length;
    for (;;) {
      if (this.state === State.HELD) {
        if (!this.start()) return pos;
        continue;
      }
      if (pos >= end) return pos;
      if (this.state === State.HEADER) {
        if (this.headFill === 0 && end - pos >= REQUEST_HEADER_SIZE) {
          this.req = decodeRequestHeader(chunk, pos);
          pos += REQUEST_HEADER_SIZE;
        } else {
          const n = Math.min(REQUEST_HEADER_SIZE - this.headFill, end - pos);
          chunk.copy(this.head, this.headFill, pos, pos + n);
          this.headFill += n;
          pos += n;
          if (this.headFill < REQUEST_HEADER_SIZE) return pos;
          this.headFill = 0;
          this.req = decodeRequestHeader(this.head, 0);
        }
        this.err = validateRequest(this.req, this.ctx);
        this.state = State.HELD;
      } else if (this.state === State.PAYLOAD) {
        const payload = this.payload!;
        const n = Math.min(payload.length - this.payloadFill, end - pos);
        chunk.copy(payload, this.payloadFill, pos, pos + n);
        this.payloadFill += n;
        pos += n;
        if (this.payloadFill === payload.length) this.complete(payload);
      } else {
        const n = Math.min(this.remaining, end - pos);
        this.remaining -= n;
        pos += n;
        if (this.remaining === 0) this.complete(null);
      }
    }
  }

  /** Offers the held request to the sink; once admitted it is handed on or its payload is awaited. */
  private start(): boolean {
    const req = this.req!;
    if (!this.sink.admit(req, this.err)) return false;
    if (req.type !== Cmd.WRITE || req.length === 0) {
      this.complete(null);
    } else if (this.err !== NbdErr.OK) {
      this.state = State.DISCARD;
      this.remaining = req.length;
    } else {
      this.state = State.PAYLOAD;
      this.payload = this.sink.allocPayload(req.length);
      this.payloadFill = 0;
    }
    return true;
  }

  private complete(payload: Buffer | null): void {
    const req = this.req!;
    this.state = State.HEADER;
    this.req = undefined;
    this.payload = undefined;
    this.sink.onRequest(req, this.err, payload);
  }
}
