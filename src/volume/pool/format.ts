// The on-disk format of a thin pool: pure encode/decode of its blocks, no I/O.
//
//   0                superblock (4 KiB): geometry, written once when the pool is made
//   ckpt[0], ckpt[1] two checkpoint slots: header (4 KiB) + volume table + reverse map
//   journal          JOURNAL_BLOCKS blocks of 4 KiB: mapping changes since the newest checkpoint
//   data             unit i at dataOffset + i * unitSize (aligned to the unit size)
//
// The reverse map has one 8-byte entry per physical unit: owner (volume slot + 1; 0 = free) and
// the virtual unit it holds. So the free map and the mapping are one table: a unit cannot be
// both free and mapped, and its size is fixed by the pool's largest size (maxUnits) — metadata
// never runs out, however far volumes over-commit (the reserve dm-thin and LVM lack); a
// checkpoint writes only the entries of the pool's current units. A
// checkpoint is valid only whole (CRC over header and body); the newer valid slot wins. Journal
// blocks carry consecutive sequence numbers from the checkpoint's; replay stops at the first
// block that is torn or out of sequence.
import zlib from 'node:zlib';

export const BLOCK = 4096;
export const MAGIC = Buffer.from('NBMPOOL1');
const CKPT_MAGIC = Buffer.from('NBMCKPT1');
const JOURNAL_MAGIC = 0x4e424d4a; // "NBMJ"
export const FORMAT_VERSION = 1;
/** Volume table entries (one per thin volume of the pool). */
export const MAX_VOLUMES = 256;
export const VOLUME_ENTRY = 128;
export const MAX_NAME = 64;
/** Journal ring: 4 MiB, about a million mapping changes between checkpoints. */
export const JOURNAL_BLOCKS = 1024;
export const JOURNAL_HEADER = 32;
export const RECORD = 16;
export const RECORDS_PER_BLOCK = Math.floor((BLOCK - JOURNAL_HEADER - 4) / RECORD);
/** Unit size bounds (dm-thin allows 64 KiB to 1 GiB; we stop at 64 MiB). */
export const MIN_UNIT = 64 * 1024;
export const MAX_UNIT = 64 * 1024 * 1024;

export class PoolFormatError extends Error {
  readonly code = 'NBD_MIRROR_POOL_FORMAT';
  constructor(message: string) {
    super(message);
    this.name = 'PoolFormatError';
  }
}

export interface Geometry {
  readonly unitSize: number;
  /** Units the metadata has room for: the pool can grow online up to this many. */
  readonly maxUnits: number;
  readonly ckptOffsets: readonly [number, number];
  readonly ckptBytes: number;
  readonly journalOffset: number;
  readonly dataOffset: number;
  /** Random identity, so a stray file is never taken for another pool. */
  readonly uuid: string;
}

const align = (n: number, to: number): number => Math.ceil(n / to) * to;

/** Where everything goes for a pool of `maxUnits` units of `unitSize` bytes. */
export function layout(unitSize: number, maxUnits: number, uuid: string): Geometry {
  if (!Number.isInteger(unitSize) || unitSize < MIN_UNIT || unitSize > MAX_UNIT || (unitSize & (unitSize - 1)) !== 0) {
    throw new PoolFormatError(`allocation unit ${unitSize} must be a power of two from 64K to 64M`);
  }
  if (!Number.isInteger(maxUnits) || maxUnits < 1 || maxUnits > 0xfffffffe) throw new PoolFormatError(`${maxUnits} units is out of range`);
  const ckptBytes = BLOCK + align(MAX_VOLUMES * VOLUME_ENTRY + maxUnits * 8, BLOCK);
  const a = BLOCK;
  const b = a + ckptBytes;
  const journalOffset = b + ckptBytes;
  const dataOffset = align(journalOffset + JOURNAL_BLOCKS * BLOCK, Math.max(unitSize, 1024 * 1024));
  return { unitSize, maxUnits, ckptOffsets: [a, b], ckptBytes, journalOffset, dataOffset, uuid };
}

export function encodeSuperblock(g: Geometry): Buffer {
  const b = Buffer.alloc(BLOCK);
  MAGIC.copy(b, 0);
  b.writeUInt32BE(FORMAT_VERSION, 8);
  b.writeUInt32BE(g.unitSize, 12);
  b.writeUInt32BE(g.maxUnits, 16);
  b.writeUInt32BE(MAX_VOLUMES, 20);
  b.writeUInt32BE(JOURNAL_BLOCKS, 24);
  Buffer.from(g.uuid, 'hex').copy(b, 32, 0, 16);
  b.writeUInt32BE(zlib.crc32(b.subarray(0, BLOCK - 4)), BLOCK - 4);
  return b;
}

/** The geometry a superblock describes; undefined when `b` is no pool superblock at all. */
export function decodeSuperblock(b: Buffer, path: string): Geometry | undefined {
  if (b.length < BLOCK || !b.subarray(0, 8).equals(MAGIC)) return undefined;
  if (b.readUInt32BE(BLOCK - 4) !== zlib.crc32(b.subarray(0, BLOCK - 4))) throw new PoolFormatError(`${path}: pool superblock checksum mismatch`);
  const version = b.readUInt32BE(8);
  if (version !== FORMAT_VERSION) throw new PoolFormatError(`${path}: pool format ${version}, this build reads ${FORMAT_VERSION}`);
  if (b.readUInt32BE(20) !== MAX_VOLUMES || b.readUInt32BE(24) !== JOURNAL_BLOCKS) throw new PoolFormatError(`${path}: pool table sizes differ from this build's`);
  return layout(b.readUInt32BE(12), b.readUInt32BE(16), b.subarray(32, 48).toString('hex'));
}

/** One thin volume's entry in the volume table. */
export interface VolumeEntry {
  readonly name: string;
  readonly size: number;
}

/**
 * A checkpoint's contents: header fields and, in `body`, the volume table then the reverse map
 * (kept in memory in exactly this form as the committed state, so writing one is one pwrite).
 */
export interface Checkpoint {
  /** The last journal sequence number it includes; the journal after it starts at block 0 with seq + 1. */
  seq: number;
  /** Units in use (the pool's current size; at most maxUnits). */
  unitCount: number;
  readonly body: Buffer;
}

export function bodyBytes(g: Geometry): number {
  return g.ckptBytes - BLOCK;
}

export function reverseMapOffset(): number {
  return MAX_VOLUMES * VOLUME_ENTRY;
}

/** Bytes of a checkpoint body in use: the volume table and the entries of the pool's units (not the room to grow). */
function usedBody(unitCount: number): number {
  return reverseMapOffset() + unitCount * 8;
}

/** Header + the used part of the body, ready to write at a checkpoint slot. */
export function encodeCheckpoint(c: Checkpoint): Buffer[] {
  const body = c.body.subarray(0, usedBody(c.unitCount));
  const h = Buffer.alloc(BLOCK);
  CKPT_MAGIC.copy(h, 0);
  h.writeBigUInt64BE(BigInt(c.seq), 8);
  h.writeUInt32BE(c.unitCount, 16);
  h.writeUInt32BE(zlib.crc32(body), 20);
  h.writeUInt32BE(zlib.crc32(h.subarray(0, BLOCK - 4)), BLOCK - 4);
  return [h, body];
}

/** A checkpoint slot's contents (`body`: the whole slot's room), or undefined when it is empty, torn or corrupt. */
export function decodeCheckpoint(header: Buffer, body: Buffer): Checkpoint | undefined {
  if (!header.subarray(0, 8).equals(CKPT_MAGIC)) return undefined;
  if (header.readUInt32BE(BLOCK - 4) !== zlib.crc32(header.subarray(0, BLOCK - 4))) return undefined;
  const unitCount = header.readUInt32BE(16);
  const used = usedBody(unitCount);
  if (used > body.length || header.readUInt32BE(20) !== zlib.crc32(body.subarray(0, used))) return undefined;
  body.fill(0, used); // room to grow into: no unit there yet
  return { seq: Number(header.readBigUInt64BE(8)), unitCount, body };
}

export function readVolumeEntry(body: Buffer, slot: number): VolumeEntry | undefined {
  const at = slot * VOLUME_ENTRY;
  const size = Number(body.readBigUInt64BE(at));
  const len = body.readUInt8(at + 8);
  if (len === 0) return undefined;
  return { size, name: body.toString('utf8', at + 9, at + 9 + len) };
}

export function writeVolumeEntry(body: Buffer, slot: number, e: VolumeEntry | undefined): void {
  const at = slot * VOLUME_ENTRY;
  body.fill(0, at, at + VOLUME_ENTRY);
  if (!e) return;
  const name = Buffer.from(e.name, 'utf8');
  if (name.length === 0 || name.length > MAX_NAME) throw new PoolFormatError(`volume name "${e.name}" must be 1-${MAX_NAME} bytes`);
  body.writeBigUInt64BE(BigInt(e.size), at);
  body.writeUInt8(name.length, at + 8);
  name.copy(body, at + 9);
}

export const enum Op {
  MAP = 1,
  UNMAP = 2,
}

/** One mapping change: virtual unit `vunit` of volume `slot` now holds (MAP) / no longer holds (UNMAP) unit `unit`. */
export interface MapRecord {
  readonly op: Op;
  readonly slot: number;
  readonly vunit: number;
  readonly unit: number;
}

/** Journal blocks for `records`, numbered from `seq`. */
export function encodeJournal(records: readonly MapRecord[], seq: number): Buffer {
  const blocks = Math.max(1, Math.ceil(records.length / RECORDS_PER_BLOCK));
  const out = Buffer.alloc(blocks * BLOCK);
  for (let i = 0; i < blocks; i++) {
    const b = out.subarray(i * BLOCK, (i + 1) * BLOCK);
    const part = records.slice(i * RECORDS_PER_BLOCK, (i + 1) * RECORDS_PER_BLOCK);
    b.writeUInt32BE(JOURNAL_MAGIC, 0);
    b.writeBigUInt64BE(BigInt(seq + i), 8);
    b.writeUInt32BE(part.length, 16);
    part.forEach((r, j) => {
      const at = JOURNAL_HEADER + j * RECORD;
      b.writeUInt32BE(r.op, at);
      b.writeUInt32BE(r.slot, at + 4);
      b.writeUInt32BE(r.vunit, at + 8);
      b.writeUInt32BE(r.unit, at + 12);
    });
    b.writeUInt32BE(zlib.crc32(b.subarray(0, BLOCK - 4)), BLOCK - 4);
  }
  return out;
}

/** The records of a journal block with sequence number `seq`, or undefined (torn, stale, or never written). */
export function decodeJournalBlock(b: Buffer, seq: number): MapRecord[] | undefined {
  if (b.readUInt32BE(0) !== JOURNAL_MAGIC || b.readUInt32BE(BLOCK - 4) !== zlib.crc32(b.subarray(0, BLOCK - 4))) return undefined;
  if (Number(b.readBigUInt64BE(8)) !== seq) return undefined;
  const n = b.readUInt32BE(16);
  if (n > RECORDS_PER_BLOCK) return undefined;
  const out: MapRecord[] = [];
  for (let j = 0; j < n; j++) {
    const at = JOURNAL_HEADER + j * RECORD;
    out.push({ op: b.readUInt32BE(at) as Op, slot: b.readUInt32BE(at + 4), vunit: b.readUInt32BE(at + 8), unit: b.readUInt32BE(at + 12) });
  }
  return out;
}
