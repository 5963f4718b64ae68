// A real block device on top of an NBD export without the kernel NBD module: nbdfuse exposes the
// export as a file, losetup makes that file a loop device. Needs root and /dev/fuse.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from './fixture.js';
import { missingTools, toolEnv, toolsRequired } from './tools.js';

/** Whether this machine can mount filesystems through nbdfuse; says so loudly when it cannot. */
export function canMountNbdfuse(what: string): boolean {
  const can = process.getuid?.() === 0 && existsSync('/dev/fuse');
  if (!can) {
    const msg = `${what} needs root and /dev/fuse`;
    if (toolsRequired) throw new Error(msg);
    console.warn(`\n*** SKIPPING: ${msg} ***\n`);
  }
  return can && missingTools('nbdfuse', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount', 'umount', 'fusermount3').length === 0;
}

export interface LoopDevice {
  /** /dev/loopN backed by the export. */
  readonly device: string;
  /** Unmounts `mountedAt` if given, then takes down the loop device and nbdfuse. */
  detach(mountedAt?: string): Promise<void>;
}

/** nbdfuse on `uri` in `dir` (created), then a loop device on its file. */
export async function attachLoop(uri: string, dir: string): Promise<LoopDevice> {
  const fuseDir = join(dir, 'fuse');
  mkdirSync(fuseDir, { recursive: true });
  const pidfile = join(dir, 'nbdfuse.pid');
  const fuse: ChildProcess = spawn('nbdfuse', ['-P', pidfile, fuseDir, uri], { env: toolEnv(), stdio: 'inherit' });
  const deadline = Date.now() + 15_000;
  while (!(existsSync(pidfile) && readFileSync(pidfile, 'utf8').trim())) {
    if (Date.now() > deadline || fuse.exitCode !== null) {
      fuse.kill();
      throw new Error(`nbdfuse did not come up on ${uri}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  let device: string;
  try {
    device = (await run('losetup', ['-f', '--show', join(fuseDir, 'nbd')])).trim();
  } catch (err) {
    await run('fusermount3', ['-u', fuseDir]).catch(() => undefined);
    fuse.kill();
    throw err;
  }
  return {
    device,
    async detach(mountedAt?: string) {
      // Undo in reverse order, each step even after a failure of the one before.
      if (mountedAt) await run('umount', [mountedAt]).catch(() => undefined);
      await run('losetup', ['-d', device]).catch(() => undefined);
      await run('fusermount3', ['-u', fuseDir]).catch(() => undefined);
      fuse.kill();
    },
  };
}
