// Making a pool's mapping changes durable, one commit at a time (dm-thin's rule: on FLUSH/FUA,
// and here at least every second). A commit:
//   1. takes the changes made so far (and the units they unmapped),
//   2. fdatasync of the pool: the data of every write completed before the commit, and the
//      zeroing of every unit allocated, are durable before any mapping that points at them,
//   3. writes the changes as journal blocks (or, when the journal is full or the volume table
//      changed, a whole checkpoint into the other slot), then fdatasync,
//   4. only then frees the unmapped units for reuse: before that, a crash would bring their old
//      mapping back, so another volume's data written into them would show through.
// A crash anywhere leaves the old committed state or the new one, never a unit both free and
// mapped (see docs/ARCHITECTURE.md, thin pools).
import fs from 'node:fs';
import { BLOCK, encodeCheckpoint, encodeJournal, JOURNAL_BLOCKS, RECORDS_PER_BLOCK, type Checkpoint, type Geometry, type MapRecord } from './format.js';
import { applyRecord } from './replay.js';
import type { Done } from '../volume.js';

export class Committer {
  private pending: MapRecord[] = [];
  /** Changes to the volume table (create, grow, delete, pool size): applied to the body by the next commit, as a checkpoint. */
  private tableChanges: Array<(c: Checkpoint) => void> = [];
  private waiters: Done[] = [];
  private running = false;
  private again = false;
  private journalAt: number;
  /** Metadata blocks written (journal blocks and checkpoints), and fdatasyncs, since open. */
  readonly counters = { commits: 0, journalBlocks: 0, checkpoints: 0, syncs: 0 };
  /** Set by the first failed metadata write: the pool takes no more changes (its state on disk is the last commit's). */
  failed: Error | null = null;

  constructor(
    private readonly fd: number,
    private readonly g: Geometry,
    /** The committed state, kept in memory exactly as a checkpoint body. */
    readonly committed: Checkpoint,
    private slot: 0 | 1,
    journalBlocks: number,
    /** Which units a commit's UNMAP records freed: the pool makes them reusable. */
    private readonly onFreed: (units: number[]) => void,
    /** The units unmapped up to now (taken when a commit starts). */
    private readonly takeUnmapped: () => number[],
  ) {
    this.journalAt = journalBlocks;
  }

  get pendingRecords(): number {
    return this.pending.length;
  }

  record(r: MapRecord): void {
    this.pending.push(r);
  }

  /** A volume-table change: written as a checkpoint by the next commit. */
  changeTable(fn: (c: Checkpoint) => void): void {
    this.tableChanges.push(fn);
  }

  /** True when a commit would write something. */
  get dirty(): boolean {
    return this.pending.length > 0 || this.tableChanges.length > 0;
  }

  /** Commits everything recorded so far (and flushes the data); `done` once durable. */
  commit(done: Done): void {
    if (this.failed) return done(this.failed);
    this.waiters.push(done);
    if (this.running) {
      this.again = true;
      return;
    }
    this.run();
  }

  /**
   * Writes a checkpoint of the committed state now (after open: the journal then restarts
   * from a clean ring). `seqSkip` moves the sequence past any block a torn commit left behind.
   */
  checkpointNow(seqSkip: number, done: Done): void {
    this.committed.seq += seqSkip;
    this.changeTable(() => undefined);
    this.commit(done);
  }

  private run(): void {
    this.running = true;
    this.again = false;
    const records = this.pending;
    const table = this.tableChanges;
    const unmapped = this.takeUnmapped();
    const waiters = this.waiters;
    this.pending = [];
    this.tableChanges = [];
    this.waiters = [];
    const finish = (err: Error | null): void => {
      if (err) this.failed ??= err;
      else this.onFreed(unmapped);
      this.counters.commits++;
      this.running = false;
      for (const w of waiters) w(this.failed);
      if (this.again || this.waiters.length) this.run();
    };
    this.sync((err) => {
      if (err) return finish(err);
      if (records.length === 0 && table.length === 0) return finish(null);
      const blocks = Math.ceil(records.length / RECORDS_PER_BLOCK);
      if (table.length > 0 || this.journalAt + blocks > JOURNAL_BLOCKS) return this.writeCheckpoint(records, table, finish);
      const bytes = encodeJournal(records, this.committed.seq + 1);
      fs.write(this.fd, bytes, 0, bytes.length, this.g.journalOffset + this.journalAt * BLOCK, (e) => {
        if (e) return finish(e);
        this.sync((e2) => {
          if (e2) return finish(e2);
          for (const r of records) applyRecord(this.committed.body, r, this.committed.unitCount, this.g.unitSize);
          this.committed.seq += blocks;
          this.journalAt += blocks;
          this.counters.journalBlocks += blocks;
          finish(null);
        });
      });
    });
  }

  /** The whole committed state into the other slot; the journal restarts at block 0 after it. */
  private writeCheckpoint(records: MapRecord[], table: Array<(c: Checkpoint) => void>, finish: Done): void {
    for (const r of records) applyRecord(this.committed.body, r, this.committed.unitCount, this.g.unitSize);
    for (const fn of table) fn(this.committed);
    // Its own sequence number, above every journal block written before it.
    this.committed.seq += Math.ceil(records.length / RECORDS_PER_BLOCK) + 1;
    const next = (this.slot ^ 1) as 0 | 1;
    const [header, body] = encodeCheckpoint(this.committed);
    const at = this.g.ckptOffsets[next];
    fs.writev(this.fd, [header!, body!], at, (err) => {
      if (err) return finish(err);
      this.sync((e) => {
        if (e) return finish(e);
        this.slot = next;
        this.journalAt = 0;
        this.counters.checkpoints++;
        finish(null);
      });
    });
  }

  private sync(done: Done): void {
    this.counters.syncs++;
    fs.fdatasync(this.fd, done);
  }
}
