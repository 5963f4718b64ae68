// What a chaos round's clients wrote and what the NBD promises say must survive, per 512-byte
// sector (a power cut tears unsynced data at sectors: test/support/powercut/).
//
// Every write gets an id and writes (id, block) repeated over its blocks, so a sector tells
// which write it came from. Two promises are kept apart:
//  - durable: a write acknowledged with FUA, or acknowledged before a FLUSH was sent that then
//    completed (on any connection: the export advertises MULTI_CONN). It must survive anything,
//    a power cut of both nodes too. Allowed afterwards: it, or any write started after it.
//  - acknowledged: while one node never went down, it holds every acknowledged write, flushed or
//    not, so after recovery the last acknowledged write (or one started after it) must be there.
// `rebase` sets what was read back after a round as the new baseline (it was flushed).

const BLOCK = 4096;
const SECTOR = 512;
const PER_BLOCK = BLOCK / SECTOR;

/** The content of write `id` for block `block`: (id, block) repeated, so misplaced data shows. */
export function blockContent(id: number, block: number): Buffer {
  const b = Buffer.allocUnsafe(BLOCK);
  for (let i = 0; i < BLOCK; i += 8) {
    b.writeUInt32LE(id, i);
    b.writeUInt32LE(block, i + 4);
  }
  return b;
}

/** The write id a sector holds (0: zeros), or -1 when it is no write's content for that block. */
function sectorWrite(sector: Buffer, block: number): number {
  const id = sector.readUInt32LE(0);
  for (let i = 0; i < SECTOR; i += 8) {
    if (sector.readUInt32LE(i) !== id || sector.readUInt32LE(i + 4) !== (id === 0 ? 0 : block)) return -1;
  }
  return id;
}

interface Acked {
  id: number;
  first: number;
  count: number;
  /** Order of the acknowledgement, for FLUSH coverage. */
  seq: number;
}

export class WriteLedger {
  /** Per sector: the write that must be there after anything (0: the baseline zeros), */
  private readonly durable: Uint32Array;
  /** … and the last acknowledged one. */
  private readonly last: Uint32Array;
  /** Per block: writes started after its durable one (acknowledged or not), in order. */
  private readonly since = new Map<number, number[]>();
  /** Acknowledged without FUA, not yet covered by a FLUSH. */
  private pendingFlush: Acked[] = [];
  private seq = 0;
  private nextId = 1;
  /** Counts since start: for the summary. */
  readonly totals = { started: 0, acked: 0, fua: 0, flushes: 0, durableByFlush: 0 };

  constructor(readonly blocks: number) {
    this.durable = new Uint32Array(blocks * PER_BLOCK);
    this.last = new Uint32Array(blocks * PER_BLOCK);
  }

  /** A write of `count` blocks from `first` is about to be sent: its id and payload. */
  start(first: number, count: number): { id: number; data: Buffer } {
    const id = this.nextId++;
    for (let b = first; b < first + count; b++) {
      const list = this.since.get(b);
      if (list) list.push(id);
      else this.since.set(b, [id]);
    }
    this.totals.started++;
    return { id, data: Buffer.concat(Array.from({ length: count }, (_, i) => blockContent(id, first + i))) };
  }

  acked(id: number, first: number, count: number, fua: boolean): void {
    this.last.fill(id, first * PER_BLOCK, (first + count) * PER_BLOCK);
    this.totals.acked++;
    if (fua) {
      this.totals.fua++;
      this.makeDurable(id, first, count);
    } else {
      this.pendingFlush.push({ id, first, count, seq: ++this.seq });
    }
  }

  /** A FLUSH is about to be sent: what it will cover once it completes. */
  flushStart(): number {
    return this.seq;
  }

  flushDone(coversSeq: number): void {
    this.totals.flushes++;
    const covered = this.pendingFlush.filter((w) => w.seq <= coversSeq);
    this.pendingFlush = this.pendingFlush.filter((w) => w.seq > coversSeq);
    for (const w of covered) {
      this.totals.durableByFlush++;
      this.makeDurable(w.id, w.first, w.count);
    }
  }

  private makeDurable(id: number, first: number, count: number): void {
    for (let b = first; b < first + count; b++) {
      if (this.durable[b * PER_BLOCK]! >= id) continue; // a later write to the block is durable already
      this.durable.fill(id, b * PER_BLOCK, (b + 1) * PER_BLOCK);
      const later = (this.since.get(b) ?? []).filter((x) => x > id);
      if (later.length > 0) this.since.set(b, later);
      else this.since.delete(b);
    }
  }

  /**
   * Problems in `data` (read back from `offset`, block-aligned): a sector holding a write the
   * rules do not allow. `strict`: the last acknowledged write must be there (no node lost it),
   * else the last durable one.
   */
  check(data: Buffer, offset: number, strict: boolean, where: string, max = 5): string[] {
    const problems: string[] = [];
    for (let s = 0; s < data.length / SECTOR && problems.length < max; s++) {
      const sector = offset / SECTOR + s;
      const block = Math.floor(sector / PER_BLOCK);
      const floor = strict ? Math.max(this.last[sector]!, this.durable[sector]!) : this.durable[sector]!;
      const got = sectorWrite(data.subarray(s * SECTOR, (s + 1) * SECTOR), block);
      const ok = got === floor || (got > floor && (this.since.get(block) ?? []).includes(got));
      if (!ok) {
        const allowed = [floor, ...(this.since.get(block) ?? []).filter((x) => x > floor)];
        problems.push(`${where}: sector ${sector} (block ${block}) holds ${got === -1 ? 'no write of this block' : `write ${got}`}, allowed ${allowed.slice(0, 6).join(', ')}${allowed.length > 6 ? ', …' : ''} (${strict ? 'last acknowledged' : 'last durable'}: ${floor})`);
      }
    }
    return problems;
  }

  /** After a round: what `data` holds (checked, identical on both nodes, flushed) is the new baseline. */
  rebase(data: Buffer, offset: number): void {
    for (let s = 0; s < data.length / SECTOR; s++) {
      const sector = offset / SECTOR + s;
      const id = Math.max(0, sectorWrite(data.subarray(s * SECTOR, (s + 1) * SECTOR), Math.floor(sector / PER_BLOCK)));
      this.durable[sector] = id;
      this.last[sector] = id;
    }
    this.since.clear();
    this.pendingFlush = [];
  }
}
