// Comparing a range on both nodes by block digests (WASM XXH3 per 4 KiB block, WASM diff),
// for checksum resync (send only the blocks that differ) and online verify (report them).
// Frame bodies are pure bytes in and out; the digests live in two DigestLists per volume, used
// synchronously only (fill, compare, done), so two lists serve every request of a volume.
// A range that is a hole (unallocated on a thin volume) is not read: its data is given as an
// empty buffer and each of its blocks takes the digest of a zero block, computed once.
import type { DigestList, Hotpath } from '../hotpath/index.js';
import { ProtocolViolation } from '../protocol/errors.js';
import { MAX_COMPARE_RANGE } from './peer-frames.js';
import { decodeRange, encodeDigest, encodeRange, RANGE_SIZE, sealDigest } from './peer-protocol.js';

/** Largest range one digest request covers (the peer refuses larger ones). */
export const COMPARE_CHUNK = MAX_COMPARE_RANGE;

export interface BlockRun {
  /** First block, counted from the range's start. */
  start: number;
  length: number;
}

export class BlockComparer {
  private readonly ours: DigestList;
  private readonly theirs: DigestList;
  readonly blocksPerChunk: number;
  /** XXH3 of one all-zero block: the digest of every block of a hole. */
  private readonly zeroDigest: bigint;

  constructor(
    private readonly hot: Hotpath,
    readonly blockSize: number,
  ) {
    this.blocksPerChunk = COMPARE_CHUNK / blockSize;
    this.ours = hot.digestList(this.blocksPerChunk);
    this.theirs = hot.digestList(this.blocksPerChunk);
    hot.blockDigests(Buffer.alloc(blockSize), blockSize, this.ours);
    this.zeroDigest = this.ours.values[0]!;
  }

  /** Gives the digest lists' memory back (the volume is deleted or reopened). */
  release(): void {
    this.ours.release();
    this.theirs.release();
  }

  /** What a volume's comparer takes from the hot path's sizing. */
  static sizing(blockSize: number): { digests: number; digestLists: number } {
    return { digests: 2 * (COMPARE_CHUNK / blockSize), digestLists: 2 };
  }

  /**
   * Body asking the peer to compare [offset, offset + length): range, then our digests. `data`
   * is the range's bytes, or empty for a hole (not read).
   */
  digestRequest(volume: number, offset: number, data: Buffer, length = data.length): Buffer[] {
    const n = this.fill(this.ours, data, length);
    return [encodeRange(volume, offset, length), Buffer.from(this.ours.bytes().subarray(0, n * 8))];
  }

  /** The range and the peer's digests of a digest request (or reply) body. */
  decodeDigests(body: Buffer): { offset: number; length: number; digests: Buffer } {
    const range = decodeRange(body);
    const digests = body.subarray(RANGE_SIZE);
    if (range.length > COMPARE_CHUNK || range.length % this.blockSize !== 0 || digests.length !== (range.length / this.blockSize) * 8) {
      throw new ProtocolViolation(`digest body for ${range.length} bytes carries ${digests.length} bytes of digests`);
    }
    return { offset: range.offset, length: range.length, digests };
  }

  /**
   * Runs of blocks where `data` (ours: `length` bytes, or empty for a hole) differs from the
   * peer's `digests` of the same range.
   */
  differing(data: Buffer, digests: Buffer, length = data.length): BlockRun[] {
    const n = this.fill(this.ours, data, length);
    const theirs = this.theirs.bytes();
    digests.copy(theirs, 0, 0, n * 8);
    theirs.fill(0, n * 8); // beyond the range both lists hold zeroes: never a difference
    return this.hot.diffRuns(this.ours, this.theirs);
  }

  /**
   * RS_DIFF body: range, sealed digest, run count u32, runs (start u32, blocks u32), then the
   * data of those runs; `parts` are views of `data`, not copies.
   */
  diffBody(volume: number, offset: number, data: Buffer, runs: readonly BlockRun[]): Buffer[] {
    const head = Buffer.allocUnsafe(RANGE_SIZE + 8 + 4 + 8 * runs.length);
    encodeRange(volume, offset, data.length).copy(head);
    head.writeUInt32BE(runs.length, RANGE_SIZE + 8);
    const parts: Buffer[] = [];
    let digest = 0n;
    runs.forEach((r, i) => {
      head.writeUInt32BE(r.start, RANGE_SIZE + 12 + 8 * i);
      head.writeUInt32BE(r.length, RANGE_SIZE + 16 + 8 * i);
      const piece = data.subarray(r.start * this.blockSize, (r.start + r.length) * this.blockSize);
      digest ^= sealDigest(this.hot.digestOf(piece), offset + r.start * this.blockSize);
      parts.push(piece);
    });
    encodeDigest(digest).copy(head, RANGE_SIZE);
    return [head, ...parts];
  }

  /** Parses an RS_DIFF body into its pieces and checks its digest (false: damaged in transit). */
  decodeDiff(body: Buffer): { offset: number; length: number; pieces: Array<{ offset: number; data: Buffer }>; intact: boolean } {
    const range = decodeRange(body);
    if (body.length < RANGE_SIZE + 12) throw new ProtocolViolation(`RS_DIFF body of ${body.length} bytes`);
    const count = body.readUInt32BE(RANGE_SIZE + 8);
    let at = RANGE_SIZE + 12 + 8 * count;
    if (at > body.length) throw new ProtocolViolation(`RS_DIFF names ${count} runs in ${body.length} bytes`);
    const pieces: Array<{ offset: number; data: Buffer }> = [];
    let digest = 0n;
    for (let i = 0; i < count; i++) {
      const start = body.readUInt32BE(RANGE_SIZE + 12 + 8 * i);
      const blocks = body.readUInt32BE(RANGE_SIZE + 16 + 8 * i);
      const bytes = blocks * this.blockSize;
      if ((start + blocks) * this.blockSize > range.length || at + bytes > body.length) throw new ProtocolViolation('RS_DIFF run outside its range');
      const piece = { offset: range.offset + start * this.blockSize, data: body.subarray(at, at + bytes) };
      digest ^= sealDigest(this.hot.digestOf(piece.data), piece.offset);
      pieces.push(piece);
      at += bytes;
    }
    return { offset: range.offset, length: range.length, pieces, intact: digest === body.readBigUInt64BE(RANGE_SIZE) };
  }

  private fill(list: DigestList, data: Buffer, length: number): number {
    if (length > COMPARE_CHUNK || length % this.blockSize !== 0) throw new RangeError(`cannot compare ${length} bytes in blocks of ${this.blockSize}`);
    if (data.length !== 0 && data.length !== length) throw new RangeError(`${data.length} bytes given for a range of ${length}`);
    const n = length / this.blockSize;
    if (data.length === 0) list.values.fill(this.zeroDigest, 0, n);
    else this.hot.blockDigests(data, this.blockSize, list);
    if (n < list.length) list.bytes().fill(0, n * 8);
    return n;
  }
}
