// The thin pool on its own (in process): allocation on first write, zero detection, TRIM and
// WRITE_ZEROES freeing units, reuse reading zeros across volumes, ENOSPC all-or-nothing,
// reservations, commit on FLUSH/FUA and replay after a process that never closed the pool,
// torn journal tails, growth, and the pool check.
import fs from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { Hotpath } from '../../src/hotpath/index.js';
import { Pool } from '../../src/volume/pool/pool.js';
import { checkPoolFile, loadPool } from '../../src/volume/pool/replay.js';
import type { ThinVolume } from '../../src/volume/pool/thin-volume.js';
import { BLOCK } from '../../src/volume/pool/format.js';
import type { Extent } from '../../src/volume/volume.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const UNIT = 64 * KiB;
const log = pino({ level: 'silent' });
const hot = Hotpath.create({ slotArenaBytes: 4 * MiB });
const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-pool-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
function openPool(size = 16 * UNIT, extra: Partial<Parameters<typeof Pool.open>[1]> = {}, path = join(dir, `pool${n++}.img`)): Pool {
  return Pool.open(path, { size, unitSize: UNIT, log, hot, volumes: [{ name: 'a', size: 64 * UNIT }, { name: 'b', size: 64 * UNIT }], commitIntervalMs: 60_000, ...extra });
}

const call = (fn: (done: (err: Error | null) => void) => void) => new Promise<void>((res, rej) => fn((err) => (err ? rej(err) : res())));
const write = (v: ThinVolume, buf: Buffer, off: number, fua = false) => call((d) => v.write(buf, off, fua, d));
const read = async (v: ThinVolume, off: number, len: number) => {
  const b = Buffer.alloc(len, 0xee);
  await call((d) => v.read(b, off, d));
  return b;
};
const extents = (v: ThinVolume, off: number, len: number) =>
  new Promise<Extent[]>((res, rej) => v.extents(off, len, 1000, (err, e) => (err ? rej(err) : res(e))));
const check = checkPoolFile;

describe('thin pool', () => {
  it('allocates a unit on first write, reads unwritten parts as zeros, reports holes', async () => {
    const pool = openPool();
    const a = pool.volume('a');
    expect(a.allocatedBytes()).toBe(0);
    await write(a, Buffer.alloc(4 * KiB, 0xab), UNIT + 8 * KiB);
    expect(a.allocatedBytes()).toBe(UNIT);
    const got = await read(a, UNIT, UNIT);
    expect(got.subarray(0, 8 * KiB).every((x) => x === 0)).toBe(true);
    expect(got.subarray(8 * KiB, 12 * KiB).every((x) => x === 0xab)).toBe(true);
    expect(got.subarray(12 * KiB).every((x) => x === 0)).toBe(true);
    expect(await extents(a, 0, 4 * UNIT)).toEqual([
      { length: UNIT, flags: 3 },
      { length: UNIT, flags: 0 },
      { length: 2 * UNIT, flags: 3 },
    ]);
    await pool.close();
  });

  it('an all-zero write allocates nothing, and a whole unit of zeros frees its unit', async () => {
    const pool = openPool();
    const a = pool.volume('a');
    await write(a, Buffer.alloc(3 * UNIT), 0);
    expect(a.allocatedBytes()).toBe(0);
    await write(a, Buffer.alloc(2 * UNIT, 1), 0);
    expect(a.allocatedBytes()).toBe(2 * UNIT);
    await write(a, Buffer.alloc(UNIT), UNIT);
    expect(a.allocatedBytes()).toBe(UNIT);
    expect((await read(a, UNIT, UNIT)).every((x) => x === 0)).toBe(true);
    await pool.close();
  });

  it('TRIM and WRITE_ZEROES free whole units and zero partial ones', async () => {
    const pool = openPool();
    const a = pool.volume('a');
    await write(a, Buffer.alloc(4 * UNIT, 7), 0);
    await call((d) => a.trim(UNIT / 2, 2 * UNIT, false, d)); // half of unit 0, all of 1, half of 2
    expect(a.allocatedBytes()).toBe(3 * UNIT);
    await call((d) => a.zero(3 * UNIT, UNIT, { noHole: false, fastZero: true, fua: false }, d));
    expect(a.allocatedBytes()).toBe(2 * UNIT);
    const got = await read(a, 0, 4 * UNIT);
    expect(got.subarray(0, UNIT / 2).every((x) => x === 7)).toBe(true);
    expect(got.subarray(UNIT / 2, UNIT * 2.5).every((x) => x === 0)).toBe(true);
    expect(got.subarray(UNIT * 2.5, 3 * UNIT).every((x) => x === 7)).toBe(true);
    expect(got.subarray(3 * UNIT).every((x) => x === 0)).toBe(true);
    await pool.close();
  });

  it('a unit freed by one volume and reused by another reads zeros where the new owner has not written', async () => {
    const pool = openPool(2 * UNIT);
    const [a, b] = [pool.volume('a'), pool.volume('b')];
    await write(a, Buffer.alloc(2 * UNIT, 0x5a), 0); // the whole pool holds a's data
    await call((d) => a.trim(0, 2 * UNIT, false, d));
    // b's write needs a unit: the freed ones are reused after the commit that makes the free durable.
    await write(b, Buffer.alloc(4 * KiB, 0x11), 4 * KiB);
    const got = await read(b, 0, UNIT);
    expect(got.subarray(0, 4 * KiB).every((x) => x === 0)).toBe(true);
    expect(got.subarray(4 * KiB, 8 * KiB).every((x) => x === 0x11)).toBe(true);
    expect(got.subarray(8 * KiB).every((x) => x === 0)).toBe(true);
    await pool.close();
  });

  it('a write needing more units than are free fails with ENOSPC and changes nothing', async () => {
    const pool = openPool(3 * UNIT);
    const [a, b] = [pool.volume('a'), pool.volume('b')];
    await write(a, Buffer.alloc(2 * UNIT, 1), 0);
    await expect(write(b, Buffer.alloc(2 * UNIT, 2), 0)).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(b.allocatedBytes()).toBe(0);
    expect((await read(b, 0, 2 * UNIT)).every((x) => x === 0)).toBe(true);
    // Overwrites of allocated units and zero writes go on; the last unit is still there.
    await write(a, Buffer.alloc(UNIT, 3), 0);
    await write(b, Buffer.alloc(UNIT), 0);
    await write(b, Buffer.alloc(UNIT, 4), 0);
    expect(pool.status()).toMatchObject({ usedBytes: 3 * UNIT, freeBytes: 0, enospcErrors: 1 });
    await pool.close();
  });

  it('onFull queue holds a write until space is freed', async () => {
    const pool = openPool(1 * UNIT, { onFull: 'queue', holdMs: 5000 });
    const [a, b] = [pool.volume('a'), pool.volume('b')];
    await write(a, Buffer.alloc(UNIT, 1), 0);
    const held = write(b, Buffer.alloc(KiB, 2), 0);
    await call((d) => a.trim(0, UNIT, false, d));
    await call((d) => a.flush(d));
    await held;
    expect(b.allocatedBytes()).toBe(UNIT);
    await pool.close();
  });

  it('a reservation keeps its units from other writers and is given back unused', async () => {
    const pool = openPool(2 * UNIT);
    const [a, b] = [pool.volume('a'), pool.volume('b')];
    const data = Buffer.alloc(2 * UNIT, 9);
    const r = a.reserve(data, 0);
    expect(r).not.toBeNull();
    expect(r).not.toBeInstanceOf(Error);
    await expect(write(b, Buffer.alloc(KiB, 1), 0)).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(a.reserve(Buffer.alloc(KiB, 1), 4 * UNIT)).toMatchObject({ code: 'ENOSPC' });
    (r as { release(): void }).release();
    await write(b, Buffer.alloc(KiB, 1), 0);
    const r2 = a.reserve(Buffer.alloc(UNIT, 1), 0);
    await write(a, Buffer.alloc(UNIT, 1), 0);
    (r2 as { release(): void }).release();
    expect(pool.status().usedBytes).toBe(2 * UNIT);
    expect(pool.map.reserved).toBe(0);
    await pool.close();
  });

  it('mappings committed by FLUSH/FUA survive a process that never closed the pool; the pool check finds 0 problems', async () => {
    const path = join(dir, 'crash.img');
    const pool = openPool(16 * UNIT, {}, path);
    const a = pool.volume('a');
    await write(a, Buffer.alloc(UNIT, 1), 0);
    await write(a, Buffer.alloc(KiB, 2), 5 * UNIT, true); // FUA commits both
    await call((d) => a.trim(0, UNIT, false, d));
    await write(pool.volume('b'), Buffer.alloc(KiB, 3), 0);
    await call((d) => a.flush(d));
    await write(a, Buffer.alloc(KiB, 4), 9 * UNIT); // not committed: may be lost
    // The "crash": the pool is dropped without close; a second open replays the journal.
    const again = openPool(16 * UNIT, {}, path);
    expect(again.volume('a').allocatedBytes()).toBe(UNIT);
    expect((await read(again.volume('a'), 5 * UNIT, KiB)).every((x) => x === 2)).toBe(true);
    expect((await read(again.volume('a'), 0, UNIT)).every((x) => x === 0)).toBe(true);
    expect((await read(again.volume('b'), 0, KiB)).every((x) => x === 3)).toBe(true);
    await again.close();
    expect(check(path)).toMatchObject({ problems: [], mappedUnits: 2, freeUnits: 14 });
    clearInterval((pool as unknown as { timer: NodeJS.Timeout }).timer);
  });

  it('a torn journal block and stale blocks after it are not replayed', async () => {
    const path = join(dir, 'torn.img');
    const pool = openPool(16 * UNIT, {}, path);
    const a = pool.volume('a');
    await write(a, Buffer.alloc(KiB, 1), 0, true);
    await write(a, Buffer.alloc(KiB, 1), UNIT, true);
    await pool.close();
    const loaded = (() => {
      const fd = fs.openSync(path, 'r+');
      const l = loadPool(fd, path);
      // Tear the second journal block: replay stops at it.
      fs.writeSync(fd, Buffer.alloc(100, 0xff), 0, 100, l.geometry.journalOffset + BLOCK + 40);
      fs.closeSync(fd);
      return l;
    })();
    expect(loaded.journalBlocks).toBeGreaterThanOrEqual(2);
    const report = check(path);
    expect(report.problems).toEqual([]);
    expect(report.mappedUnits).toBe(1);
  });

  it('a full journal is followed by a checkpoint; the state survives reopening', async () => {
    const path = join(dir, 'wrap.img');
    const pool = openPool(16 * UNIT, {}, path);
    const a = pool.volume('a');
    // Each FUA write of a new pattern commits one journal block (a MAP, or an UNMAP and a MAP).
    for (let i = 0; i < 1100; i++) {
      if (i % 2) await call((d) => a.trim(0, UNIT, false, d));
      await write(a, Buffer.alloc(KiB, (i % 250) + 1), (i % 2) * UNIT, true);
    }
    expect(pool.status().metadata.checkpoints).toBeGreaterThanOrEqual(1);
    await pool.close();
    const again = openPool(16 * UNIT, {}, path);
    expect((await read(again.volume('a'), UNIT, KiB)).every((x) => x === ((1099 % 250) + 1))).toBe(true);
    expect(again.volume('a').allocatedBytes()).toBe(UNIT); // the last round trimmed unit 0
    await again.close();
    expect(check(path)).toMatchObject({ problems: [], mappedUnits: 1 });
  }, 60_000);

  it('grows online: new units become allocatable', async () => {
    const pool = openPool(UNIT);
    const a = pool.volume('a');
    await write(a, Buffer.alloc(KiB, 1), 0);
    await expect(write(a, Buffer.alloc(KiB, 1), UNIT)).rejects.toMatchObject({ code: 'ENOSPC' });
    await call((d) => pool.grow(3 * UNIT, d));
    await write(a, Buffer.alloc(KiB, 1), UNIT);
    expect(pool.status()).toMatchObject({ sizeBytes: 3 * UNIT, usedBytes: 2 * UNIT });
    await pool.close();
  });

  it('deleting a volume frees its units after the commit', async () => {
    const pool = openPool(2 * UNIT);
    await write(pool.volume('a'), Buffer.alloc(2 * UNIT, 1), 0);
    await call((d) => pool.deleteVolume('a', d));
    await write(pool.volume('b'), Buffer.alloc(2 * UNIT, 2), 0);
    expect((await read(pool.volume('b'), 0, 2 * UNIT)).every((x) => x === 2)).toBe(true);
    await pool.close();
  });

  it('logs each threshold once when crossed', async () => {
    const lines: Array<{ msg: string; threshold?: number }> = [];
    const spy = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
    const pool = openPool(4 * UNIT, { log: spy });
    const a = pool.volume('a');
    for (let i = 0; i < 4; i++) await write(a, Buffer.alloc(KiB, 1), i * UNIT);
    await write(a, Buffer.alloc(KiB, 1), 0);
    expect(lines.filter((l) => l.msg.startsWith('pool use crossed')).map((l) => l.threshold)).toEqual([75, 90]);
    expect(pool.status().thresholdsCrossed).toEqual([75, 90]);
    await pool.close();
  });

  it('zero detection in WASM memory agrees with a plain scan', () => {
    const slot = hot.slots.acquire(MiB);
    slot.fill(0);
    expect(hot.allZero(slot)).toBe(true);
    for (const at of [0, 63, 64, MiB - 1]) {
      slot[at] = 1;
      expect(hot.allZero(slot)).toBe(false);
      expect(hot.allZero(slot.subarray(at + 1))).toBe(true);
      slot[at] = 0;
    }
    expect(hot.allZero(Buffer.alloc(200 * KiB))).toBe(true);
    const outside = Buffer.alloc(200 * KiB);
    outside[150 * KiB] = 1;
    expect(hot.allZero(outside)).toBe(false);
    hot.slots.release(slot);
  });
});
