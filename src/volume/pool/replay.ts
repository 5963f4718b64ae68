// Loading a pool's committed state from disk: the newest valid checkpoint, then its journal
// replayed block by block until the first torn or out-of-sequence one. Used when a pool opens
// and by `nbd-mirror pool check`, which also checks every invariant of the result.
import fs from 'node:fs';
import {
  BLOCK,
  bodyBytes,
  decodeCheckpoint,
  decodeJournalBlock,
  decodeSuperblock,
  JOURNAL_BLOCKS,
  MAX_VOLUMES,
  Op,
  PoolFormatError,
  readVolumeEntry,
  reverseMapOffset,
  type Checkpoint,
  type Geometry,
  type MapRecord,
} from './format.js';

export interface LoadedPool {
  readonly geometry: Geometry;
  /** The committed state: the newest checkpoint with the journal applied. */
  readonly checkpoint: Checkpoint;
  /** The slot that checkpoint was read from (the next one goes to the other). */
  readonly slot: 0 | 1;
  /** Journal blocks replayed, and the records in them. */
  readonly journalBlocks: number;
  readonly records: number;
  /** Journal records that broke an invariant (skipped); a healthy pool has none. */
  readonly problems: string[];
}

function readAt(fd: number, length: number, position: number): Buffer {
  const b = Buffer.alloc(length);
  for (let got = 0; got < length; ) {
    const n = fs.readSync(fd, b, got, length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return b;
}

/** The geometry of the pool at `fd`, or undefined when it holds no pool superblock. */
export function readGeometry(fd: number, path: string): Geometry | undefined {
  return decodeSuperblock(readAt(fd, BLOCK, 0), path);
}

export function loadPool(fd: number, path: string): LoadedPool {
  const geometry = readGeometry(fd, path);
  if (!geometry) throw new PoolFormatError(`${path} is not an nbd-mirror pool`);
  const slots = geometry.ckptOffsets.map((at) => decodeCheckpoint(readAt(fd, BLOCK, at), readAt(fd, bodyBytes(geometry), at + BLOCK)));
  const [a, b] = slots;
  const slot: 0 | 1 = a && (!b || a.seq > b.seq) ? 0 : 1;
  const checkpoint = slots[slot];
  if (!checkpoint) throw new PoolFormatError(`${path}: no valid checkpoint in either slot (the pool's metadata is damaged)`);
  const problems: string[] = [];
  let blocks = 0;
  let records = 0;
  for (; blocks < JOURNAL_BLOCKS; blocks++) {
    const got = decodeJournalBlock(readAt(fd, BLOCK, geometry.journalOffset + blocks * BLOCK), checkpoint.seq + 1 + blocks);
    if (!got) break;
    for (const r of got) {
      const problem = applyRecord(checkpoint.body, r, checkpoint.unitCount, geometry.unitSize);
      if (problem) problems.push(`journal block ${blocks}: ${problem}`);
      records++;
    }
  }
  checkpoint.seq += blocks;
  return { geometry, checkpoint, slot, journalBlocks: blocks, records, problems };
}

/** Applies one mapping change to a checkpoint body; returns why it cannot apply (and leaves the body alone). */
export function applyRecord(body: Buffer, r: MapRecord, unitCount: number, unitSize: number): string | null {
  if (r.unit >= unitCount) return `unit ${r.unit} is past the pool's ${unitCount} units`;
  const at = reverseMapOffset() + r.unit * 8;
  const owner = body.readUInt32BE(at);
  if (r.op === Op.MAP) {
    const e = r.slot < MAX_VOLUMES ? readVolumeEntry(body, r.slot) : undefined;
    if (!e) return `MAP of unit ${r.unit} to volume slot ${r.slot}, which does not exist`;
    if (r.vunit >= Math.ceil(e.size / unitSize)) return `MAP of unit ${r.unit} to unit ${r.vunit} past the end of volume ${e.name}`;
    if (owner !== 0) return `MAP of unit ${r.unit}, which is not free`;
    body.writeUInt32BE(r.slot + 1, at);
    body.writeUInt32BE(r.vunit, at + 4);
    return null;
  }
  if (r.op === Op.UNMAP) {
    if (owner !== r.slot + 1 || body.readUInt32BE(at + 4) !== r.vunit) return `UNMAP of unit ${r.unit}, which volume slot ${r.slot} unit ${r.vunit} does not hold`;
    body.writeUInt32BE(0, at);
    body.writeUInt32BE(0, at + 4);
    return null;
  }
  return `unknown journal record type ${r.op as number}`;
}

export interface CheckReport {
  readonly problems: string[];
  readonly unitSize: number;
  readonly unitCount: number;
  readonly maxUnits: number;
  readonly mappedUnits: number;
  readonly freeUnits: number;
  readonly volumes: Array<{ name: string; size: number; mappedUnits: number }>;
  readonly journalBlocks: number;
  readonly journalRecords: number;
}

/**
 * Every invariant of a loaded pool: each mapped unit belongs to a volume that exists, inside
 * its size, and no virtual unit is held by two physical units (which would also mean a unit
 * both free and mapped somewhere: the owner field is the free map).
 */
export function checkPool(loaded: LoadedPool): CheckReport {
  const { geometry: g, checkpoint: c } = loaded;
  const problems = [...loaded.problems];
  if (c.unitCount > g.maxUnits) problems.push(`${c.unitCount} units exceed the metadata's room for ${g.maxUnits}`);
  const volumes: CheckReport['volumes'] = [];
  const bySlot = new Map<number, { seen: Uint8Array; v: CheckReport['volumes'][number] }>();
  for (let slot = 0; slot < MAX_VOLUMES; slot++) {
    const e = readVolumeEntry(c.body, slot);
    if (!e) continue;
    const v = { name: e.name, size: e.size, mappedUnits: 0 };
    volumes.push(v);
    bySlot.set(slot, { seen: new Uint8Array(Math.ceil(e.size / g.unitSize)), v });
  }
  let mapped = 0;
  const base = reverseMapOffset();
  for (let u = 0; u < Math.min(c.unitCount, g.maxUnits); u++) {
    const owner = c.body.readUInt32BE(base + u * 8);
    if (owner === 0) continue;
    const vunit = c.body.readUInt32BE(base + u * 8 + 4);
    const vol = bySlot.get(owner - 1);
    if (!vol) problems.push(`unit ${u} is mapped to volume slot ${owner - 1}, which does not exist`);
    else if (vunit >= vol.seen.length) problems.push(`unit ${u} is mapped past the end of volume ${vol.v.name} (unit ${vunit})`);
    else if (vol.seen[vunit]) problems.push(`volume ${vol.v.name} unit ${vunit} is mapped twice (again by unit ${u})`);
    else {
      vol.seen[vunit] = 1;
      vol.v.mappedUnits++;
      mapped++;
    }
  }
  for (let u = c.unitCount; u < g.maxUnits; u++) if (c.body.readUInt32BE(base + u * 8) !== 0) problems.push(`unit ${u} is past the pool's end but mapped`);
  return {
    problems,
    unitSize: g.unitSize,
    unitCount: c.unitCount,
    maxUnits: g.maxUnits,
    mappedUnits: mapped,
    freeUnits: c.unitCount - mapped,
    volumes,
    journalBlocks: loaded.journalBlocks,
    journalRecords: loaded.records,
  };
}

/** `nbd-mirror pool check PATH`: loads read-only and checks. */
export function checkPoolFile(path: string): CheckReport {
  const fd = fs.openSync(path, 'r');
  try {
    return checkPool(loadPool(fd, path));
  } finally {
    fs.closeSync(fd);
  }
}
