// The live allocation state of a pool, in memory (no I/O): which physical unit holds which
// virtual unit of which volume, the free units, and the units that may not be reused yet.
//
// A unit has one of these states:
//   free      — in the free stack; allocatable
//   mapped    — owner/vunit set; forward map points at it
//   unmapping — its UNMAP is not committed yet: a crash would bring the old mapping back, so it
//               must not hold another volume's data before the commit (waitingCommit)
//   parked    — unmap committed, but a read or write of it is still in flight (pins): reused
//               only once that I/O is done, or it could land in (or read from) the next owner's data
import { PoolFormatError, readVolumeEntry, reverseMapOffset, Op, type MapRecord } from './format.js';

export class UnitMap {
  /** Live reverse map: owner slot + 1 (0 = not mapped) and virtual unit, per physical unit. */
  readonly owner: Uint32Array;
  readonly vunitOf: Uint32Array;
  /** Per volume slot: virtual unit → physical unit + 1 (0 = unmapped). */
  private readonly forward: Array<Uint32Array | undefined> = [];
  private readonly mappedPerSlot: number[] = [];
  private readonly free: Uint32Array;
  private freeTop = 0;
  private waitingCommit: number[] = [];
  private readonly pins = new Map<number, number>();
  private readonly parked = new Set<number>();
  /** Units promised to reservations (mirrored writes about to allocate): not allocatable by others. */
  reserved = 0;
  mapped = 0;

  constructor(
    readonly maxUnits: number,
    public unitCount: number,
  ) {
    this.owner = new Uint32Array(maxUnits);
    this.vunitOf = new Uint32Array(maxUnits);
    this.free = new Uint32Array(maxUnits);
  }

  /** The state a committed checkpoint body describes (after replay). */
  static fromBody(body: Buffer, maxUnits: number, unitCount: number, maxSlots: number, unitSize: number): UnitMap {
    const m = new UnitMap(maxUnits, unitCount);
    for (let slot = 0; slot < maxSlots; slot++) {
      const e = readVolumeEntry(body, slot);
      if (e) m.addVolume(slot, Math.ceil(e.size / unitSize));
    }
    const base = reverseMapOffset();
    for (let u = unitCount - 1; u >= 0; u--) {
      const owner = body.readUInt32BE(base + u * 8);
      const vunit = body.readUInt32BE(base + u * 8 + 4);
      const fwd = owner === 0 ? undefined : m.forward[owner - 1];
      // A checked pool has none of these; pool check reports them, opening refuses them.
      if (owner !== 0 && (!fwd || vunit >= fwd.length || fwd[vunit] !== 0)) throw new PoolFormatError(`unit ${u} maps volume slot ${owner - 1} unit ${vunit}, which is no valid, unmapped unit`);
      if (owner === 0) m.free[m.freeTop++] = u;
      else m.link(owner - 1, vunit, u);
    }
    return m;
  }

  addVolume(slot: number, vunits: number): void {
    this.forward[slot] = new Uint32Array(vunits);
    this.mappedPerSlot[slot] = 0;
  }

  /** Grows a volume's forward map (online resize). */
  resizeVolume(slot: number, vunits: number): void {
    const old = this.forward[slot]!;
    if (vunits < old.length) throw new PoolFormatError('thin volumes only grow');
    const next = new Uint32Array(vunits);
    next.set(old);
    this.forward[slot] = next;
  }

  /** Unmaps every unit of a volume and forgets it; its units are reusable after the next commit. */
  dropVolume(slot: number): void {
    const fwd = this.forward[slot];
    if (fwd) for (let v = 0; v < fwd.length; v++) if (fwd[v] !== 0) this.waitingCommit.push(this.unlink(slot, v));
    this.forward[slot] = undefined;
  }

  volumeUnits(slot: number): number {
    return this.forward[slot]?.length ?? 0;
  }

  mappedUnits(slot: number): number {
    return this.mappedPerSlot[slot] ?? 0;
  }

  /** Physical unit holding virtual unit `vunit` of `slot`, or -1. */
  lookup(slot: number, vunit: number): number {
    return this.forward[slot]![vunit]! - 1;
  }

  /** Free units not promised to a reservation. */
  get available(): number {
    return this.freeTop - this.reserved;
  }

  get freeUnits(): number {
    return this.freeTop;
  }

  /** Units unmapped but not reusable yet (commit or I/O pending). */
  get pendingFree(): number {
    return this.waitingCommit.length + this.parked.size;
  }

  /** Units a commit would make reusable (their unmap is not committed yet). */
  get pendingCommit(): number {
    return this.waitingCommit.length;
  }

  /** Maps `vunit` of `slot` to a free unit; the caller checked there is one. */
  allocate(slot: number, vunit: number): MapRecord {
    if (this.freeTop === 0) throw new PoolFormatError('no free unit (the caller checks availability first)');
    const unit = this.free[--this.freeTop]!;
    this.link(slot, vunit, unit);
    return { op: Op.MAP, slot, vunit, unit };
  }

  /** Unmaps `vunit` of `slot`; the unit is reusable only after `committed`. */
  unmap(slot: number, vunit: number): MapRecord {
    const unit = this.unlink(slot, vunit);
    this.waitingCommit.push(unit);
    return { op: Op.UNMAP, slot, vunit, unit };
  }

  /** Units unmapped so far: the next commit covers them (taken before it starts). */
  takeWaiting(): number[] {
    const units = this.waitingCommit;
    this.waitingCommit = [];
    return units;
  }

  /** Their unmap is durable: free, or parked until their I/O is done. */
  release(units: readonly number[]): void {
    for (const u of units) {
      if (this.pins.has(u)) this.parked.add(u);
      else this.free[this.freeTop++] = u;
    }
  }

  pin(unit: number): void {
    this.pins.set(unit, (this.pins.get(unit) ?? 0) + 1);
  }

  /** True when a parked unit became free. */
  unpin(unit: number): boolean {
    const n = this.pins.get(unit)! - 1;
    if (n > 0) return void this.pins.set(unit, n), false;
    this.pins.delete(unit);
    if (!this.parked.delete(unit)) return false;
    this.free[this.freeTop++] = unit;
    return true;
  }

  /** New units at the end (the pool grew). */
  grow(unitCount: number): void {
    for (let u = this.unitCount; u < unitCount; u++) this.free[this.freeTop++] = u;
    this.unitCount = unitCount;
  }

  private link(slot: number, vunit: number, unit: number): void {
    this.owner[unit] = slot + 1;
    this.vunitOf[unit] = vunit;
    this.forward[slot]![vunit] = unit + 1;
    this.mappedPerSlot[slot]!++;
    this.mapped++;
  }

  private unlink(slot: number, vunit: number): number {
    const fwd = this.forward[slot]!;
    const unit = fwd[vunit]! - 1;
    fwd[vunit] = 0;
    this.owner[unit] = 0;
    this.vunitOf[unit] = 0;
    this.mappedPerSlot[slot]!--;
    this.mapped--;
    return unit;
  }
}
