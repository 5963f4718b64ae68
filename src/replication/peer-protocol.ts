// The peer link's wire format (node ↔ node), pure bytes in and out like src/protocol/.
//
// Every frame: a 20-byte header, big-endian as NBD is,
//   magic u32 "NBMR" | type u16 | flags u16 | body length u32 | id u64
// then `length` bytes of body. `id` pairs a request with its reply (WRITE ↔ WRITE_ACK).
// HELLO carries JSON (rare, and readable in a packet capture); data frames are binary.
//
// Integrity: every frame that carries data (WRITE, RS_DATA, RS_DIFF, PEER_READ_DATA) carries an XXH3-64
// digest of it, sealed with the frame's offset and flags (see sealDigest), which the receiver
// checks before the data goes near a disk. RS_HOLES, which makes the target zero what it names,
// ends with an XXH3-64 of the rest of its body.
import { MAX_REQUEST } from '../protocol/constants.js';
import { nbdErrName, nbdErrno, ProtocolViolation } from '../protocol/errors.js';

export const PEER_MAGIC = 0x4e424d52; // "NBMR"
/**
 * 2: HELLO carries a boot id; the listener answers HELLO only after accepting the dialer's.
 * 3: VOLUME_OP/VOLUME_OP_ACK (volumes changed online); an RS_DATA without data says its range is
 *    all zeros (RS_DATA_ZERO).
 * 4: RS_HOLES_REQUEST/RS_HOLES (a resync target learns the source's holes of up to 1 GiB at once
 *    and pulls only the data); VERIFY_HOLES_REQUEST/VERIFY_HOLES (a verifier learns the peer's
 *    holes the same way and skips the ranges that are holes on both nodes — added to 4 without
 *    a new version: no release ever spoke 4 without them). A node of version 3 is refused at
 *    HELLO, as every other version: both nodes of a pair are upgraded together.
 */
export const PEER_VERSION = 4;
export const FRAME_HEADER_SIZE = 20;
/** WRITE body: volume u32, flags u32, offset u64, digest u64, then the data. */
export const WRITE_HEADER_SIZE = 24;
/** Bytes of a PEER_READ_DATA body before the data: range, status, digest. */
export const PEER_READ_DATA_HEADER_SIZE = 28;
/**
 * Largest body of any frame: the answer to a maximal client read on a resync target (the
 * largest data header + one maximal request). Each type's own limit is in peer-frames.ts.
 */
export const MAX_FRAME_BODY = PEER_READ_DATA_HEADER_SIZE + MAX_REQUEST;
/** Largest range one resync request (and so one RS_DATA) covers. */
export const MAX_RESYNC_RANGE = 1024 * 1024;
/**
 * Largest range one RS_HOLES_REQUEST asks about (and one RS_ACK covers: the dirty grains of a
 * hole): the source answers from its allocation map without reading data, so this bounds only
 * the map walk (a thin volume looks up each unit) and how long the target holds client writes
 * to the range (see resync-target.ts).
 */
export const MAX_HOLES_RANGE = 1024 * 1024 * 1024;
/** Most hole runs one RS_HOLES carries (the source then answers for a shorter range). */
export const MAX_HOLE_RUNS = 4096;

export const enum PeerMsg {
  HELLO = 1,
  HELLO_ACK = 2,
  ERROR = 3,
  PING = 4,
  PONG = 5,
  WRITE = 16,
  WRITE_ACK = 17,
  FLUSH = 18,
  FLUSH_ACK = 19,
  /** TRIM / WRITE_ZEROES: range body + flags u32 (1 = FUA, 2 = NO_HOLE); answered by WRITE_ACK. */
  TRIM = 20,
  ZERO = 21,
  /** Resync: the sender's dirty runs (volume u32, then start/length f64 pairs); flag 1 = last frame. */
  BITMAP_RUNS = 40,
  /** Target → source: send me [offset, offset + length) (volume u32, offset u64, length u32). */
  RS_REQUEST = 41,
  /** Source → target: the data of a request (range, digest u64, then data). */
  RS_DATA = 42,
  /** Target → source: that range is written; clear its bits (same body as RS_REQUEST). */
  RS_ACK = 43,
  /** Target → source: every dirty range is copied (volume u32). */
  RS_DONE = 44,
  /** Resync target → source: a client read of ranges not copied yet (range body). */
  PEER_READ = 45,
  /** Source → target: its answer (range body, status u32, digest u64, then the data when status is 0). */
  PEER_READ_DATA = 46,
  /** Checksum resync, target → source: range, then the target's XXH3 of each 4 KiB block (u64 LE). */
  RS_CSUM_REQUEST = 47,
  /** Checksum resync, source → target: only the blocks that differ (see block-compare.ts); answered by RS_ACK. */
  RS_DIFF = 48,
  /** Verify, verifier → peer: send me your block digests of this range (range body). */
  VERIFY_REQUEST = 49,
  /** Verify, peer → verifier: range, then XXH3 of each 4 KiB block (u64 LE). */
  VERIFY_DIGESTS = 50,
  /**
   * Resync, target → source: which parts of this range (at most MAX_HOLES_RANGE) are holes on
   * your copy? (range body). Answered from the allocation map, without reading data.
   */
  RS_HOLES_REQUEST = 53,
  /**
   * Source → target: its holes in [offset, offset + length) (range body, where length may be
   * less than asked: the part this answer covers), then up to MAX_HOLE_RUNS runs (start u32 from
   * the range's offset, length u32), ordered, apart, inside the range, then the XXH3-64 of all
   * that (u64). The rest of the range is data.
   */
  RS_HOLES = 54,
  /** Verify, verifier → peer: your holes in this range (at most MAX_HOLES_RANGE)? (range body). */
  VERIFY_HOLES_REQUEST = 55,
  /** Verify, peer → verifier: its holes, in an RS_HOLES body (encodeHoles). */
  VERIFY_HOLES = 56,
  /** Start a resync now (after verify --repair): body u32, 1 = the receiver is the source, 0 = the target. */
  RESYNC_NOW = 51,
  /**
   * The sender's disk for this volume failed (body u32: the NBD errno): it stores nothing more
   * and serves its reads from the receiver, which now holds the only good copy and marks every
   * change out of sync (Failed disk state, replication-state.ts).
   */
  DISK_FAILED = 52,
  /** The sender stops gracefully: the receiver goes on writing alone without the witness. */
  LEAVING = 60,
  /**
   * A volume created, grown or deleted online (volume-ops.ts): JSON body naming the change; the
   * receiver applies it (or refuses) and answers VOLUME_OP_ACK with the same id.
   */
  VOLUME_OP = 61,
  /** Its answer: status u32 (0 = applied, 1 = refused), then the reason in UTF-8. */
  VOLUME_OP_ACK = 62,
}

/** WRITE_ACK status asking the sender to send the frame again: its digest did not match. */
export const STATUS_RESEND = 0x52534e44; // "RSND"

/**
 * Status body of WRITE_ACK, FLUSH_ACK and PEER_READ_DATA: 0, or the NBD errno of the failure
 * (EIO, ENOSPC, EPERM, …: the peer's disk errno, so the client hears the real cause).
 */
export function encodeStatus(err: Error | null): Buffer {
  return encodeStatusCode(err ? nbdErrno(err) : 0);
}

export function encodeStatusCode(code: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(code);
  return b;
}

/** The errno name of a non-zero status (ENOSPC, EIO, …; an unknown number reads as EIO). */
export function statusErrno(code: number): string {
  const name = nbdErrName(code);
  return name.startsWith('E#') ? 'EIO' : name;
}

/** TRIM/ZERO body: range, then flags u32 (1 = FUA, 2 = NO_HOLE). */
export function encodeChange(volume: number, offset: number, length: number, flags: number): Buffer {
  const b = Buffer.alloc(RANGE_SIZE + 4);
  encodeRange(volume, offset, length).copy(b);
  b.writeUInt32BE(flags, RANGE_SIZE);
  return b;
}

/** BITMAP_RUNS bodies: volume u32, then (start, length) f64 pairs in grains, `perFrame` runs each. */
export function encodeRuns(volume: number, runs: ReadonlyArray<{ start: number; length: number }>, perFrame: number): Buffer[] {
  const bodies: Buffer[] = [];
  for (let i = 0; i < runs.length || i === 0; i += perFrame) {
    const part = runs.slice(i, i + perFrame);
    const body = Buffer.alloc(4 + 16 * part.length);
    body.writeUInt32BE(volume, 0);
    part.forEach((r, j) => {
      body.writeDoubleBE(r.start, 4 + 16 * j);
      body.writeDoubleBE(r.length, 12 + 16 * j);
    });
    bodies.push(body);
  }
  return bodies;
}

/** A run of bytes [offset, offset + length). */
export interface ByteRun {
  readonly offset: number;
  readonly length: number;
}

/** Bytes of one hole run in an RS_HOLES body: start u32 (from the range's offset), length u32. */
export const HOLE_RUN_SIZE = 8;

/**
 * RS_HOLES body: the covered range, its holes (absolute runs inside it, ordered), and the
 * digest (`digestOf`: XXH3-64) of those bytes.
 */
export function encodeHoles(volume: number, offset: number, length: number, holes: readonly ByteRun[], digestOf: (b: Buffer) => bigint): Buffer {
  const b = Buffer.alloc(HOLES_FIXED_SIZE + HOLE_RUN_SIZE * holes.length);
  encodeRange(volume, offset, length).copy(b);
  holes.forEach((h, i) => {
    b.writeUInt32BE(h.offset - offset, RANGE_SIZE + HOLE_RUN_SIZE * i);
    b.writeUInt32BE(h.length, RANGE_SIZE + HOLE_RUN_SIZE * i + 4);
  });
  b.writeBigUInt64BE(digestOf(b.subarray(0, b.length - 8)), b.length - 8);
  return b;
}

/** Does an RS_HOLES body's digest match the rest of it? */
export function holesIntact(body: Buffer, digestOf: (b: Buffer) => bigint): boolean {
  return body.length >= HOLES_FIXED_SIZE && digestOf(body.subarray(0, body.length - 8)) === body.readBigUInt64BE(body.length - 8);
}

/**
 * The hole runs of an RS_HOLES body as absolute runs (its digest is checked apart: holesIntact),
 * or a ProtocolViolation saying why they cannot be: a partial run, an empty run, one outside the body's range, out of order or
 * overlapping the one before.
 */
export function decodeHoles(body: Buffer): ByteRun[] {
  const { offset, length } = decodeRange(body);
  const runsEnd = body.length - 8;
  if (runsEnd < RANGE_SIZE || (runsEnd - RANGE_SIZE) % HOLE_RUN_SIZE !== 0) throw new ProtocolViolation(`${runsEnd - RANGE_SIZE} bytes of hole runs`);
  const holes: ByteRun[] = [];
  let after = 0;
  for (let at = RANGE_SIZE; at < runsEnd; at += HOLE_RUN_SIZE) {
    const start = body.readUInt32BE(at);
    const n = body.readUInt32BE(at + 4);
    if (n === 0) throw new ProtocolViolation(`an empty hole run at ${start}`);
    if (start + n > length) throw new ProtocolViolation(`hole run ${start}+${n} outside the ${length} bytes answered`);
    if (start < after) throw new ProtocolViolation(`hole run ${start}+${n} out of order or overlapping the one before`);
    holes.push({ offset: offset + start, length: n });
    after = start + n;
  }
  return holes;
}

export function decodeRuns(body: Buffer): Array<{ start: number; length: number }> {
  const runs: Array<{ start: number; length: number }> = [];
  for (let at = 4; at + 16 <= body.length; at += 16) runs.push({ start: body.readDoubleBE(at), length: body.readDoubleBE(at + 8) });
  return runs;
}

/** Bytes of an RS_DATA body before the data: range, digest. */
export const RS_DATA_HEADER_SIZE = 24;
/**
 * The seal flag of an RS_DATA that carries no data: its range is all zeros on the source (a
 * hole of a thin volume, or zeros written), and the target zeroes it — a thin volume frees its
 * units — instead of receiving and writing the zeros (a mostly empty volume syncs in time
 * proportional to its data).
 */
export const RS_DATA_ZERO = 1;
/**
 * The digest a data frame carries: XXH3-64 of the data, mixed with the frame's offset and flags
 * so that a flipped bit in them is caught as surely as one in the data.
 */
export function sealDigest(dataDigest: bigint, offset: number, flags = 0): bigint {
  return dataDigest ^ BigInt(offset) ^ (BigInt(flags) << 56n);
}

/** Body of RS_REQUEST and RS_ACK; RS_DATA starts with it. */
export const RANGE_SIZE = 16;

/** Bytes of an RS_HOLES body besides its runs: the range, and the digest at the end. */
export const HOLES_FIXED_SIZE = RANGE_SIZE + 8;

export function encodeRange(volume: number, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(RANGE_SIZE);
  b.writeUInt32BE(volume, 0);
  b.writeBigUInt64BE(BigInt(offset), 4);
  b.writeUInt32BE(length, 12);
  return b;
}

export function decodeRange(body: Buffer): { volume: number; offset: number; length: number } {
  if (body.length < RANGE_SIZE) throw new ProtocolViolation(`range body of ${body.length} bytes`);
  return { volume: body.readUInt32BE(0), offset: Number(body.readBigUInt64BE(4)), length: body.readUInt32BE(12) };
}

export interface FrameHeader {
  readonly type: number;
  readonly flags: number;
  readonly length: number;
  readonly id: bigint;
}

export function encodeFrameHeader(type: PeerMsg, id: bigint, length: number, flags = 0): Buffer {
  const b = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
  b.writeUInt32BE(PEER_MAGIC, 0);
  b.writeUInt16BE(type, 4);
  b.writeUInt16BE(flags, 6);
  b.writeUInt32BE(length, 8);
  b.writeBigUInt64BE(id, 12);
  return b;
}

/** A whole frame as one buffer (control frames; WRITE data goes out as a separate buffer). */
export function encodeFrame(type: PeerMsg, id: bigint, body: Buffer = Buffer.alloc(0), flags = 0): Buffer {
  return Buffer.concat([encodeFrameHeader(type, id, body.length, flags), body]);
}

export interface WriteHeader {
  readonly volume: number;
  readonly flags: number;
  readonly offset: number;
  /** XXH3-64 of the data, checked by the receiver. */
  readonly digest: bigint;
}

export function encodeWriteHeader(w: WriteHeader): Buffer {
  const b = Buffer.allocUnsafe(WRITE_HEADER_SIZE);
  b.writeUInt32BE(w.volume, 0);
  b.writeUInt32BE(w.flags, 4);
  b.writeBigUInt64BE(BigInt(w.offset), 8);
  b.writeBigUInt64BE(w.digest, 16);
  return b;
}

/** Reads the u64 digest at `at` (RS_DATA, PEER_READ_DATA). */
export function readDigest(body: Buffer, at: number): bigint {
  if (body.length < at + 8) throw new ProtocolViolation(`data frame body of ${body.length} bytes is shorter than its header`);
  return body.readBigUInt64BE(at);
}

export function encodeDigest(digest: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(digest);
  return b;
}

export function decodeWriteHeader(body: Buffer): WriteHeader {
  if (body.length < WRITE_HEADER_SIZE) throw new ProtocolViolation(`WRITE body of ${body.length} bytes is shorter than its header`);
  return {
    volume: body.readUInt32BE(0),
    flags: body.readUInt32BE(4),
    offset: Number(body.readBigUInt64BE(8)),
    digest: body.readBigUInt64BE(16),
  };
}

export interface FrameSink {
  /** Checks a header before its body is buffered (throws a ProtocolViolation to refuse it). */
  admit?(header: FrameHeader): void;
  /**
   * Asked once a header is admitted, before its body is allocated (and again on each `resume`):
   * true holds the frame — nothing of it is allocated, and the bytes after its header are kept
   * unparsed — until `resume` finds it false. The receiver's backpressure (see peer-link.ts).
   */
  hold?(header: FrameHeader): boolean;
  /** A buffer of `length` bytes to receive a frame body into (a hot-path slot for WRITEs). */
  allocBody(length: number): Buffer;
  onFrame(header: FrameHeader, body: Buffer): void;
}

/** Bytes kept while a frame is held start in a buffer of this size (one socket read is at most 256 KiB). */
const KEPT_MIN = 64 * 1024;
const NO_BYTES = Buffer.alloc(0);

/**
 * Streaming frame decoder: chunks in, whole frames out, no concatenation. A bad magic or an
 * oversize body is a ProtocolViolation: the link is dropped, and no data is touched.
 *
 * States: gathering a header (`header` unset); HELD (a header the sink holds: no body yet,
 * later bytes are kept, in order, in `kept`); receiving a body (`body` set, `bodyFill` of it
 * in place). Chunks may be views of a reused receive buffer: what is kept is copied.
 */
export class FrameDecoder {
  private readonly head = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
  private headFill = 0;
  private header: FrameHeader | undefined;
  private body: Buffer | undefined;
  private bodyFill = 0;
  private held = false;
  /** Bytes that arrived while a frame was held: the first `keptLength` of `kept`. */
  private kept: Buffer | undefined;
  private keptLength = 0;

  constructor(private readonly sink: FrameSink) {}

  /** True while a decoded frame waits for the sink to let it go on (see FrameSink.hold). */
  get holding(): boolean {
    return this.held;
  }

  feed(chunk: Buffer): void {
    if (this.held) return this.keep(chunk, 0);
    this.parse(chunk, 0);
  }

  /** Goes on with a held frame if the sink lets it now, then with the bytes kept meanwhile. */
  resume(): void {
    if (!this.held || !this.start()) return;
    const kept = this.kept?.subarray(0, this.keptLength) ?? NO_BYTES;
    this.dropKept();
    // Held again part way: keep() copies the rest (less than one socket read) into a new buffer.
    this.parse(kept, 0);
  }

  /**
   * While a frame body with at least `min` bytes still to come is being received: the part of
   * its buffer those bytes go to, so the socket can read straight into it (no second copy).
   */
  bodyTarget(min: number): Buffer | undefined {
    const body = this.body;
    if (!body) return undefined;
    return body.length - this.bodyFill >= min ? body.subarray(this.bodyFill) : undefined;
  }

  /** The connection is gone: hands back the buffer of a body only partly received (to release it), if any. */
  abandon(): Buffer | undefined {
    const body = this.body;
    this.header = undefined;
    this.body = undefined;
    this.held = false;
    this.dropKept();
    return body;
  }

  /** `n` body bytes are in place (copied by `feed`, or read straight into `bodyTarget`). */
  bodyArrived(n: number): void {
    this.bodyFill += n;
    const body = this.body!;
    if (this.bodyFill < body.length) return;
    const header = this.header!;
    this.header = undefined;
    this.body = undefined;
    this.sink.onFrame(header, body);
  }

  /** Decodes `chunk` from `pos` until it ends or a frame is held (the rest is then kept). */
  private parse(chunk: Buffer, pos: number): void {
    for (;;) {
      if (!this.header) {
        if (pos >= chunk.length) return;
        const n = Math.min(FRAME_HEADER_SIZE - this.headFill, chunk.length - pos);
        chunk.copy(this.head, this.headFill, pos, pos + n);
        this.headFill += n;
        pos += n;
        if (this.headFill < FRAME_HEADER_SIZE) return;
        this.headFill = 0;
        const header = decodeFrameHeader(this.head);
        this.sink.admit?.(header);
        this.header = header;
        if (!this.start()) return this.keep(chunk, pos);
      }
      const body = this.body!;
      const n = Math.min(body.length - this.bodyFill, chunk.length - pos);
      chunk.copy(body, this.bodyFill, pos, pos + n);
      pos += n;
      this.bodyArrived(n);
      if (this.body) return; // the body waits for more bytes: the chunk is used up
    }
  }

  /** The decoded header goes on unless the sink holds it: its body is allocated. */
  private start(): boolean {
    this.held = this.sink.hold?.(this.header!) ?? false;
    if (this.held) return false;
    this.body = this.sink.allocBody(this.header!.length);
    this.bodyFill = 0;
    return true;
  }

  private dropKept(): void {
    this.kept = undefined;
    this.keptLength = 0;
  }

  /** Keeps `chunk` from `pos` (a copy), after what is kept already. */
  private keep(chunk: Buffer, pos: number): void {
    const n = chunk.length - pos;
    if (n === 0) return;
    const had = this.keptLength;
    if (!this.kept || had + n > this.kept.length) {
      const grown = Buffer.allocUnsafe(Math.max(KEPT_MIN, had + n, 2 * had));
      this.kept?.copy(grown, 0, 0, had);
      this.kept = grown;
    }
    chunk.copy(this.kept, had, pos);
    this.keptLength += n;
  }
}

export function decodeFrameHeader(b: Buffer): FrameHeader {
  const magic = b.readUInt32BE(0);
  if (magic !== PEER_MAGIC) throw new ProtocolViolation(`bad peer frame magic 0x${magic.toString(16)}`);
  const length = b.readUInt32BE(8);
  if (length > MAX_FRAME_BODY) throw new ProtocolViolation(`peer frame body of ${length} bytes exceeds ${MAX_FRAME_BODY}`);
  return { type: b.readUInt16BE(4), flags: b.readUInt16BE(6), length, id: b.readBigUInt64BE(12) };
}
