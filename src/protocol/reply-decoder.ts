// The client side of the transmission phase: replies (simple, and structured chunks) decoded
// from a byte stream as it arrives, without concatenating packets. READ data goes straight into
// the buffer the request named (one copy from the socket; none with `dataTarget`); everything
// else of a chunk is small and collected in a buffer of its own. Pure: bytes in, calls out.
// A reply the request cannot have (an unknown cookie, data outside the request, a chunk type
// the command does not take) is a ProtocolViolation: the caller drops the connection.
import {
  Chunk,
  Cmd,
  ReplyFlag,
  SIMPLE_REPLY_HEADER_SIZE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './constants.js';
import { ProtocolViolation } from './errors.js';

/** Longest chunk body we collect (BLOCK_STATUS descriptors, error messages): more is a violation. */
export const MAX_CHUNK_META = 1024 * 1024;

/** Chunk bodies up to this size are collected in the decoder's own buffer (sinks copy what they keep). */
const SMALL_META = 64;

/** What the decoder needs to know about a request in flight. */
export interface ReplyTarget {
  readonly type: number;
  readonly offset: number;
  readonly length: number;
  /** READ: the `length` bytes the data goes into. */
  readonly data: Buffer | undefined;
}

export interface ReplySink {
  /** The request in flight under this cookie, or undefined. */
  request(cookie: number): ReplyTarget | undefined;
  /** BLOCK_STATUS descriptors (context id, then length/flags pairs); `body` is valid during the call only. */
  onExtents(cookie: number, body: Buffer): void;
  /** An error reply or error chunk. */
  onError(cookie: number, errno: number, message: string): void;
  /** The last reply (chunk) of the request arrived. */
  onDone(cookie: number): void;
}

const enum Phase {
  /** The reply magic and header. */
  HEAD,
  /** A small chunk body (or the 8-byte offset before OFFSET_DATA's data). */
  META,
  /** READ data into the request's buffer. */
  DATA,
}

export class ReplyDecoder {
  private phase = Phase.HEAD;
  private readonly head = Buffer.alloc(STRUCTURED_REPLY_HEADER_SIZE);
  private readonly small = Buffer.alloc(SMALL_META);
  private have = 0;
  private need = 4;
  private meta: Buffer | undefined;
  private cookie = 0;
  private structured = false;
  private flags = 0;
  private chunkType = 0;
  private target: ReplyTarget | undefined;
  private dataAt = 0;
  private dataLeft = 0;

  constructor(private readonly sink: ReplySink) {}

  /** True between replies: nothing of one is half received. */
  get between(): boolean {
    return this.phase === Phase.HEAD && this.have === 0;
  }

  /** Decodes all of `b` (valid during the call only). Throws ProtocolViolation. */
  feed(b: Buffer): void {
    let i = 0;
    while (i < b.length) {
      if (this.phase === Phase.DATA) {
        const n = Math.min(this.dataLeft, b.length - i);
        b.copy(this.target!.data!, this.dataAt, i, i + n);
        i += n;
        this.dataArrived(n);
        continue;
      }
      const into = this.phase === Phase.HEAD ? this.head : this.meta!;
      const n = Math.min(this.need - this.have, b.length - i);
      b.copy(into, this.have, i, i + n);
      i += n;
      this.have += n;
      if (this.have < this.need) continue;
      if (this.phase === Phase.HEAD) this.header();
      else this.metaDone();
    }
  }

  /** Where the next read may go directly: the rest of a READ chunk's data, if at least `min` bytes. */
  dataTarget(min: number): Buffer | undefined {
    if (this.phase !== Phase.DATA || this.dataLeft < min) return undefined;
    return this.target!.data!.subarray(this.dataAt, this.dataAt + this.dataLeft);
  }

  /** `n` bytes of data arrived in place (from `dataTarget`, or copied by `feed`). */
  dataArrived(n: number): void {
    this.dataAt += n;
    this.dataLeft -= n;
    if (this.dataLeft === 0) this.chunkEnd();
  }

  private header(): void {
    const h = this.head;
    if (this.need === 4) {
      const magic = h.readUInt32BE(0);
      if (magic === SIMPLE_REPLY_MAGIC) this.need = SIMPLE_REPLY_HEADER_SIZE;
      else if (magic === STRUCTURED_REPLY_MAGIC) this.need = STRUCTURED_REPLY_HEADER_SIZE;
      else throw new ProtocolViolation(`bad reply magic 0x${magic.toString(16)}`);
      return;
    }
    this.structured = this.need === STRUCTURED_REPLY_HEADER_SIZE;
    this.cookie = h.readUInt32BE(12);
    const t = this.sink.request(this.cookie);
    if (!t || h.readUInt32BE(8) !== 0) throw new ProtocolViolation(`reply for a cookie not in flight (${h.readUInt32BE(8)}:${this.cookie})`);
    this.target = t;
    this.have = 0;
    if (!this.structured) return this.simple(h.readUInt32BE(4));
    this.flags = h.readUInt16BE(4);
    this.chunkType = h.readUInt16BE(6);
    const len = h.readUInt32BE(16);
    switch (this.chunkType) {
      case Chunk.NONE:
        if (len !== 0 || (this.flags & ReplyFlag.DONE) === 0) throw new ProtocolViolation('NONE chunk with a body or without DONE');
        return this.chunkEnd();
      case Chunk.OFFSET_DATA:
        if (t.type !== Cmd.READ || len <= 8) throw new ProtocolViolation('OFFSET_DATA chunk for a request that is no READ, or without data');
        this.dataLeft = len - 8;
        return this.collect(8);
      case Chunk.OFFSET_HOLE:
        if (t.type !== Cmd.READ || len !== 12) throw new ProtocolViolation('OFFSET_HOLE chunk for a request that is no READ, or of the wrong length');
        return this.collect(12);
      case Chunk.BLOCK_STATUS:
        if (t.type !== Cmd.BLOCK_STATUS || len < 12 || (len - 4) % 8 !== 0 || len > MAX_CHUNK_META) throw new ProtocolViolation('BLOCK_STATUS chunk of the wrong command or length');
        return this.collect(len);
      case Chunk.ERROR:
      case Chunk.ERROR_OFFSET:
        if (len < 6 || len > MAX_CHUNK_META) throw new ProtocolViolation('error chunk of the wrong length');
        return this.collect(len);
      default:
        throw new ProtocolViolation(`unknown chunk type ${this.chunkType}`);
    }
  }

  private simple(errno: number): void {
    const t = this.target!;
    if (errno !== 0) {
      this.sink.onError(this.cookie, errno, '');
      return this.chunkEnd();
    }
    if (t.type !== Cmd.READ) return this.chunkEnd();
    this.dataAt = 0;
    this.dataLeft = t.length;
    this.phase = Phase.DATA;
    if (this.dataLeft === 0) this.chunkEnd();
  }

  private collect(n: number): void {
    this.phase = Phase.META;
    this.need = n;
    this.have = 0;
    // The common small bodies (a data chunk's offset, a hole) reuse one buffer: no garbage per read.
    this.meta = n <= SMALL_META ? this.small.subarray(0, n) : Buffer.allocUnsafe(n);
  }

  private metaDone(): void {
    const m = this.meta!;
    const t = this.target!;
    this.meta = undefined;
    switch (this.chunkType) {
      case Chunk.OFFSET_DATA: {
        const at = Number(m.readBigUInt64BE(0)) - t.offset;
        if (at < 0 || at + this.dataLeft > t.length) throw new ProtocolViolation('OFFSET_DATA outside the request');
        this.dataAt = at;
        this.phase = Phase.DATA;
        return;
      }
      case Chunk.OFFSET_HOLE: {
        const at = Number(m.readBigUInt64BE(0)) - t.offset;
        const len = m.readUInt32BE(8);
        if (at < 0 || len === 0 || at + len > t.length) throw new ProtocolViolation('OFFSET_HOLE outside the request');
        t.data!.fill(0, at, at + len);
        return this.chunkEnd();
      }
      case Chunk.BLOCK_STATUS:
        this.sink.onExtents(this.cookie, m);
        return this.chunkEnd();
      default: {
        const msgLen = m.readUInt16BE(4);
        if (6 + msgLen > m.length) throw new ProtocolViolation('error message longer than its chunk');
        this.sink.onError(this.cookie, m.readUInt32BE(0), m.toString('utf8', 6, 6 + msgLen));
        return this.chunkEnd();
      }
    }
  }

  private chunkEnd(): void {
    const done = !this.structured || (this.flags & ReplyFlag.DONE) !== 0;
    const cookie = this.cookie;
    this.phase = Phase.HEAD;
    this.need = 4;
    this.have = 0;
    this.target = undefined;
    if (done) this.sink.onDone(cookie);
  }
}
