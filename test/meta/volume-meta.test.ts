import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/index.js';
import { DiskState, MetaError, VolumeMeta } from '../../src/meta/volume-meta.js';

const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-meta-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const GiB = 2 ** 30;
const id = { cluster: 'hospital', node: 'a', volumeSize: 4 * GiB, grain: 4096 };
const bits = VolumeMeta.bitsFor(id.volumeSize, id.grain);
const hot = () => Hotpath.create({ bitmaps: [bits] });
const mark = (m: VolumeMeta, first: number, count: number) => new Promise<void>((res, rej) => m.markDirty(first, count, (e) => (e ? rej(e) : res())));

describe('VolumeMeta', () => {
  it('creates a fresh file: Inconsistent, a new current generation, an empty bitmap', () => {
    const m = VolumeMeta.open(join(dir, 'fresh.meta'), id, hot());
    expect(m.state).toBe(DiskState.Inconsistent);
    expect(m.generation.current).toMatch(/^[0-9a-f]{16}$/);
    expect(m.generation.current).not.toBe('0000000000000000');
    expect(m.bitmap.count()).toBe(0);
    m.close();
  });

  it('dirty bits survive a reopen (they were durable when markDirty answered)', async () => {
    const path = join(dir, 'persist.meta');
    const m = VolumeMeta.open(path, id, hot());
    await mark(m, 10, 5);
    await mark(m, bits - 3, 3);
    await mark(m, 500_000, 100_000);
    m.close();
    const again = VolumeMeta.open(path, id, hot());
    expect(again.bitmap.runs()).toEqual([
      { start: 10, length: 5 },
      { start: 500_000, length: 100_000 },
      { start: bits - 3, length: 3 },
    ]);
    again.close();
  });

  it('concurrent markDirty calls share write-backs; bits already durable cost no sync', async () => {
    const m = VolumeMeta.open(join(dir, 'batch.meta'), id, hot());
    await Promise.all(Array.from({ length: 50 }, (_, i) => mark(m, i * 1000, 8)));
    expect(m.bitmapSyncs).toBeLessThanOrEqual(2);
    const before = m.bitmapSyncs;
    await mark(m, 1000, 8);
    expect(m.bitmapSyncs).toBe(before);
    m.close();
  });

  it('clearing is written back by flushBitmap', async () => {
    const path = join(dir, 'clear.meta');
    const m = VolumeMeta.open(path, id, hot());
    await mark(m, 0, 1000);
    m.clearDirty(0, 500);
    await new Promise<void>((res, rej) => m.flushBitmap((e) => (e ? rej(e) : res())));
    m.close();
    const again = VolumeMeta.open(path, id, hot());
    expect(again.bitmap.runs()).toEqual([{ start: 500, length: 500 }]);
    again.close();
  });

  it('persists state and generation changes', () => {
    const path = join(dir, 'gen.meta');
    const m = VolumeMeta.open(path, id, hot());
    const g = { current: '1111111111111111', bitmap: '2222222222222222', history: ['3333333333333333', '4444444444444444'] as [string, string] };
    m.saveIdentity({ state: DiskState.UpToDate, generation: g });
    m.close();
    const again = VolumeMeta.open(path, id, hot());
    expect(again.state).toBe(DiskState.UpToDate);
    expect(again.generation).toEqual(g);
    again.close();
  });

  it('refuses a file of another node or size, a corrupt superblock, or a foreign file, readably', () => {
    const path = join(dir, 'ident.meta');
    VolumeMeta.open(path, id, hot()).close();
    expect(() => VolumeMeta.open(path, { ...id, node: 'b' }, hot())).toThrow(/node: a here, b expected/);
    expect(() => VolumeMeta.open(path, { ...id, volumeSize: 2 * GiB }, Hotpath.create({ bitmaps: [bits / 2] }))).toThrow(MetaError);
    const bytes = readFileSync(path);
    bytes[100] = bytes[100]! ^ 0xff;
    writeFileSync(path, bytes);
    expect(() => VolumeMeta.open(path, id, hot())).toThrow(/checksum mismatch/);
    writeFileSync(join(dir, 'foreign.meta'), Buffer.alloc(8192, 1));
    expect(() => VolumeMeta.open(join(dir, 'foreign.meta'), id, hot())).toThrow(/not an nbd-mirror metadata file/);
  });

  it('grows a cleanly closed file: bits kept, the new range clear, the log moved; only when closed, only larger', async () => {
    const small = { ...id, volumeSize: 64 * 2 ** 20 };
    const path = join(dir, 'grow.meta');
    const h = Hotpath.create({ bitmaps: [VolumeMeta.bitsFor(small.volumeSize, 4096), VolumeMeta.bitsFor(GiB, 4096)] });
    const m = VolumeMeta.open(path, small, h);
    await mark(m, 3, 2);
    await mark(m, 16383, 1);
    expect(() => VolumeMeta.grow(path, small, GiB)).toThrow(/not closed cleanly/);
    m.close();
    m.bitmap.release();
    expect(() => VolumeMeta.grow(path, small, 32 * 2 ** 20)).toThrow(/only grow/);
    expect(() => VolumeMeta.grow(path, { ...small, node: 'b' }, GiB)).toThrow(/another volume or node/);
    VolumeMeta.grow(path, small, GiB);
    expect(VolumeMeta.recordedSize(path)).toBe(GiB);
    expect(() => VolumeMeta.open(path, small, h)).toThrow(MetaError);
    const big = VolumeMeta.open(path, { ...small, volumeSize: GiB }, h);
    expect(big.recoveredExtents).toBe(0);
    expect(big.bitmap.runs()).toEqual([
      { start: 3, length: 2 },
      { start: 16383, length: 1 },
    ]);
    expect(big.state).toBe(m.state);
    expect(big.generation).toEqual(m.generation);
    big.close();
    expect(VolumeMeta.recordedSize(join(dir, 'none.meta'))).toBeUndefined();
  });

  it('a growth cut between its steps opens at the old size or the new one, bits kept, the log empty', async () => {
    const small = { ...id, volumeSize: 64 * 2 ** 20 };
    const bigSize = 256 * 2 ** 20;
    const h = Hotpath.create({ bitmaps: [VolumeMeta.bitsFor(small.volumeSize, 4096), VolumeMeta.bitsFor(bigSize, 4096)] });
    const path = join(dir, 'cut.meta');
    const m = VolumeMeta.open(path, small, h);
    await mark(m, 100, 3);
    // Writes in flight when the process dies: their extent is in the log.
    await new Promise<void>((res, rej) => m.activityLog.begin(8 * 2 ** 20, 4096, (e) => (e ? rej(e) : res())));
    m.bitmap.release();
    // growOpen's first steps done (log emptied, file cut back and extended), then the cut: no
    // superblock with the new size, and the RUNNING flag still set (a crash).
    const fd = openSync(path, 'r+');
    const region = (size: number) => Math.ceil(VolumeMeta.bitsFor(size, 4096) / 8 / 4096) * 4096;
    ftruncateSync(fd, 4096 + region(small.volumeSize));
    ftruncateSync(fd, 4096 + region(bigSize) + 2 * 4096);
    closeSync(fd);
    const old = VolumeMeta.open(path, small, h);
    expect(old.recoveredExtents).toBe(0); // the log it had is gone: cut only after it was emptied
    expect(old.bitmap.runs()).toEqual([{ start: 100, length: 3 }]);
    expect(old.checksumResync).toBe(true); // a crash all the same
    old.close();
    old.bitmap.release();
    // And the whole growth, online: from then on it opens at the new size only.
    const live = VolumeMeta.open(path, small, h);
    live.growOpen(bigSize, h);
    expect(live.bitmap.bits).toBe(VolumeMeta.bitsFor(bigSize, 4096));
    await mark(live, VolumeMeta.bitsFor(bigSize, 4096) - 1, 1);
    await new Promise<void>((res, rej) => live.activityLog.begin(200 * 2 ** 20, 4096, (e) => (e ? rej(e) : res())));
    live.bitmap.release();
    // Dies with an extent in the moved log: recovered from its new place.
    const again = VolumeMeta.open(path, { ...small, volumeSize: bigSize }, h);
    expect(again.recoveredExtents).toBe(1);
    expect(again.bitmap.count(100, 3)).toBe(3);
    expect(again.bitmap.count(VolumeMeta.bitsFor(bigSize, 4096) - 1, 1)).toBe(1);
    expect(again.bitmap.count((200 * 2 ** 20) / 4096, 1024)).toBe(1024);
    expect(() => VolumeMeta.open(path, small, h)).toThrow(MetaError);
    again.close();
  });
});
