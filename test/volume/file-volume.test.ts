import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AllocState } from '../../src/protocol/constants.js';
import { FileVolume, type IoMode } from '../../src/volume/file-volume.js';
import type { Done, Extent } from '../../src/volume/volume.js';

const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-vol-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const call = (fn: (done: Done) => void) => new Promise<void>((res, rej) => fn((e) => (e ? rej(e) : res())));
const extents = (v: FileVolume, off: number, len: number, max = 100) =>
  new Promise<Extent[]>((res, rej) => v.extents(off, len, max, (e, x) => (e ? rej(e) : res(x))));

const MiB = 1 << 20;

describe.each<IoMode>(['auto', 'sync', 'async', 'mmap'])('FileVolume (io %s)', (io) => {
  it('creates a missing file sparse, reads zeroes, writes and reads back', async () => {
    const path = join(dir, `a-${io}.img`);
    const v = FileVolume.open(path, { createSize: 16 * MiB, io });
    expect(v.size).toBe(16 * MiB);
    expect(statSync(path).blocks).toBe(0);
    const big = Buffer.alloc(MiB, 0xab);
    await call((d) => v.write(big, 3 * MiB, true, d));
    await call((d) => v.write(Buffer.from('tiny'), 10, false, d));
    const back = Buffer.alloc(MiB);
    await call((d) => v.read(back, 3 * MiB, d));
    expect(back.equals(big)).toBe(true);
    const small = Buffer.alloc(6);
    await call((d) => v.read(small, 9, d));
    expect(small).toEqual(Buffer.from('\0tiny\0'));
    await call((d) => v.flush(d));
    await v.close();
  });

  it('reports holes and data, trims to holes, zeroes with and without holes', async () => {
    const v = FileVolume.open(join(dir, `b-${io}.img`), { createSize: 16 * MiB, io });
    await call((d) => v.write(Buffer.alloc(2 * MiB, 1), 4 * MiB, false, d));
    expect(await extents(v, 0, 16 * MiB)).toEqual([
      { length: 4 * MiB, flags: AllocState.HOLE | AllocState.ZERO },
      { length: 2 * MiB, flags: AllocState.DATA },
      { length: 10 * MiB, flags: AllocState.HOLE | AllocState.ZERO },
    ]);
    expect(await extents(v, 0, 16 * MiB, 1)).toHaveLength(1);
    await call((d) => v.trim(4 * MiB, MiB, false, d));
    expect((await extents(v, 4 * MiB, MiB))[0]!.flags).toBe(AllocState.HOLE | AllocState.ZERO);
    await call((d) => v.zero(5 * MiB, 4096, { noHole: true, fastZero: false, fua: true }, d));
    const z = Buffer.alloc(8192, 9);
    await call((d) => v.read(z, 5 * MiB, d));
    expect(z.subarray(0, 4096).every((x) => x === 0)).toBe(true);
    expect(z.subarray(4096).every((x) => x === 1)).toBe(true);
    await call((d) => v.cache(0, 16 * MiB, d));
    await v.close();
  });
});

describe('FileVolume zero-copy views (io mmap)', () => {
  it('shows current contents, including writes made after the mapping', async () => {
    const v = FileVolume.open(join(dir, 'view.img'), { createSize: 16 * MiB, io: 'mmap' });
    expect(v.view(0, 4096)!.every((x) => x === 0)).toBe(true);
    await call((d) => v.write(Buffer.alloc(8192, 0x3c), 4 * MiB - 4096, false, d));
    const view = v.view(4 * MiB - 4096, 8192)!;
    expect(view.every((x) => x === 0x3c)).toBe(true);
    await call((d) => v.zero(4 * MiB - 4096, 4096, { noHole: false, fastZero: false, fua: false }, d));
    expect(view.subarray(0, 4096).every((x) => x === 0)).toBe(true);
    await v.close();
    expect(v.view(0, 4096)).toBeUndefined();
  });

  it('gives no view in other modes, or for requests over the maximum payload', () => {
    expect(FileVolume.open(join(dir, 'view2.img'), { createSize: 64 * MiB }).view(0, 4096)).toBeUndefined();
    expect(FileVolume.open(join(dir, 'view3.img'), { createSize: 64 * MiB, io: 'mmap' }).view(0, 33 * MiB)).toBeUndefined();
  });
});

describe('FileVolume.open', () => {
  it('refuses a missing file without a size, with a readable error', () => {
    expect(() => FileVolume.open(join(dir, 'missing.img'))).toThrow(/give --size/);
  });
  it('serves an existing file at its own size, read-only when asked', () => {
    const path = join(dir, 'existing.img');
    writeFileSync(path, Buffer.alloc(8192, 7));
    const v = FileVolume.open(path, { readOnly: true });
    expect(v.size).toBe(8192);
    expect(v.capabilities.readOnly).toBe(true);
    expect(v.capabilities.trim).toBe(false);
  });
});
