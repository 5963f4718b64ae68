// A real filesystem on top: nbdfuse exposes the export as a file, losetup makes it a block
// device, mkfs.ext4 + mount + files + umount, then fsck finds it clean and the files intact.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, serveTempExport, type Fixture } from '../support/fixture.js';
import { attachLoop, canMountNbdfuse, type LoopDevice } from '../support/nbdfuse.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe.skipIf(!canMountNbdfuse('ext4-on-nbdfuse test'))('ext4 on nbdfuse + losetup', () => {
  let f: Fixture;
  let loop: LoopDevice | undefined;
  let mnt: string;
  let mounted = false;

  beforeAll(async () => {
    f = await serveTempExport({ size: '256M' });
    mnt = join(f.dir, 'mnt');
    mkdirSync(mnt);
    loop = await attachLoop(f.uri, f.dir);
  });

  afterAll(async () => {
    await loop?.detach(mounted ? mnt : undefined);
    await f?.cleanup();
  });

  it('mkfs, write files, unmount, remount and read them, fsck clean', async () => {
    const dev = loop!.device;
    await run('mkfs.ext4', ['-q', '-F', dev]);
    await run('mount', [dev, mnt]);
    mounted = true;
    const files = Array.from({ length: 8 }, (_, i) => ({ name: `file${i}`, data: randomBytes((i + 1) * 1_000_000) }));
    for (const file of files) writeFileSync(join(mnt, file.name), file.data);
    await run('umount', [mnt]);
    mounted = false;
    await run('mount', [dev, mnt]);
    mounted = true;
    for (const file of files) expect(sha(readFileSync(join(mnt, file.name)))).toBe(sha(file.data));
    await run('umount', [mnt]);
    mounted = false;
    const fsck = await run('fsck.ext4', ['-fn', dev]);
    expect(fsck).toMatch(/\d+\/\d+ files/);
  });
});
