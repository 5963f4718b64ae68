// A real filesystem on top: nbdfuse exposes the export as a file, losetup makes it a block
// device, mkfs.ext4 + mount + files + umount, then fsck finds it clean and the files intact.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, serveTempExport, type Fixture } from '../support/fixture.js';
import { missingTools, toolEnv, toolsRequired } from '../support/tools.js';

const canMount = process.getuid?.() === 0 && existsSync('/dev/fuse');
if (!canMount) {
  const msg = 'ext4-on-nbdfuse test needs root and /dev/fuse';
  if (toolsRequired) throw new Error(msg);
  console.warn(`\n*** SKIPPING: ${msg} ***\n`);
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe.skipIf(!canMount || missingTools('nbdfuse', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount', 'umount', 'fusermount3').length > 0)(
  'ext4 on nbdfuse + losetup',
  () => {
    let f: Fixture;
    let fuse: ChildProcess | undefined;
    let loop: string | undefined;
    let fuseDir: string;
    let mnt: string;
    let mounted = false;

    beforeAll(async () => {
      f = await serveTempExport({ size: '256M' });
      fuseDir = join(f.dir, 'fuse');
      mnt = join(f.dir, 'mnt');
      mkdirSync(fuseDir);
      mkdirSync(mnt);
      const pidfile = join(f.dir, 'nbdfuse.pid');
      fuse = spawn('nbdfuse', ['-P', pidfile, fuseDir, f.uri], { env: toolEnv(), stdio: 'inherit' });
      const deadline = Date.now() + 15_000;
      while (!(existsSync(pidfile) && readFileSync(pidfile, 'utf8').trim())) {
        if (Date.now() > deadline || fuse.exitCode !== null) throw new Error('nbdfuse did not come up');
        await new Promise((r) => setTimeout(r, 50));
      }
      loop = (await run('losetup', ['-f', '--show', join(fuseDir, 'nbd')])).trim();
    });

    afterAll(async () => {
      // Undo in reverse order whatever was set up, even after a failure.
      if (mounted) await run('umount', [mnt]).catch(() => undefined);
      if (loop) await run('losetup', ['-d', loop]).catch(() => undefined);
      await run('fusermount3', ['-u', fuseDir]).catch(() => undefined);
      fuse?.kill();
      await f?.cleanup();
    });

    it('mkfs, write files, unmount, remount and read them, fsck clean', async () => {
      await run('mkfs.ext4', ['-q', '-F', loop!]);
      await run('mount', [loop!, mnt]);
      mounted = true;
      const files = Array.from({ length: 8 }, (_, i) => ({ name: `file${i}`, data: randomBytes((i + 1) * 1_000_000) }));
      for (const file of files) writeFileSync(join(mnt, file.name), file.data);
      await run('umount', [mnt]);
      mounted = false;
      await run('mount', [loop!, mnt]);
      mounted = true;
      for (const file of files) expect(sha(readFileSync(join(mnt, file.name)))).toBe(sha(file.data));
      await run('umount', [mnt]);
      mounted = false;
      const fsck = await run('fsck.ext4', ['-fn', loop!]);
      expect(fsck).toMatch(/\d+\/\d+ files/);
    });
  },
);
