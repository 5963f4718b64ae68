// A mounted ext4 filesystem on `nbd-mirror attach` (nbdfuse + loop device) rides through the
// failures a host must not notice: files are written and fsynced without pause while the active
// node is killed (-9), restarted and resynced (I/O moves back to it), then hung (SIGSTOP) and
// woken. The filesystem stays mounted throughout; afterwards fsck finds it clean, every file
// reads back after a remount, and both nodes hold the same bytes.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readFile, writeFile, open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStatus, dataFile, pairInSync, startPair, until } from '../support/cluster.js';
import { run } from '../support/fixture.js';
import { attachLoop, canMountNbdfuse, type LoopDevice } from '../support/nbdfuse.js';
import { startAttachProcess, startClusterNode, type RunningServer } from '../support/processes.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe.skipIf(!canMountNbdfuse('ext4 through attach test'))('ext4 through nbd-mirror attach across fail-over and fail-back', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-attach-ext4-'));
  const procs: RunningServer[] = [];
  let loop: LoopDevice | undefined;
  let mounted: string | undefined;
  afterAll(async () => {
    await loop?.detach(mounted);
    for (const p of procs) await p.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('stays mounted and fsck-clean through kill -9, resync and SIGSTOP of the active node', async () => {
    const pair = await startPair(dir, '128M', procs);
    const { p, config } = pair;
    let a = pair.a;
    const attach = await startAttachProcess(config);
    procs.push(attach);
    const st = () => attachStatus(attach.adminPort);
    await until(async () => (await st()).active === 'a');

    loop = await attachLoop(`nbd://127.0.0.1:${attach.port}/vol0`, join(dir, 'fuse'));
    await run('mkfs.ext4', ['-q', '-F', loop.device]);
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt, { recursive: true });
    await run('mount', [loop.device, mnt]);
    mounted = mnt;

    // Files written and fsynced one after another for as long as the failures go on.
    const files = new Map<string, string>();
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop && i < 10_000; i++) {
        const data = randomBytes(512 * 1024 + (i % 97) * 4096);
        const name = `f${i % 40}`; // files are rewritten too (at most 40 of under 1 MiB: the volume never fills)
        const fh = await open(join(mnt, name), 'w');
        await fh.writeFile(data);
        await fh.sync();
        await fh.close();
        files.set(name, sha(data));
      }
    })();
    const written = () => files.size;

    await until(() => written() >= 5, 30_000);
    await a.stop('SIGKILL');
    await until(async () => (await st()).active === 'b', 30_000);
    const n1 = written();
    await until(() => written() > n1 + 5 || files.size >= 40, 30_000);
    a = await startClusterNode(config, 'a');
    procs.push(a);
    await until(async () => (await st()).active === 'a' && (await st()).failbacks >= 1, 60_000);
    a.proc.kill('SIGSTOP');
    await until(async () => (await st()).active === 'b', 30_000);
    a.proc.kill('SIGCONT');
    await until(async () => (await st()).active === 'a' && (await st()).failbacks >= 2, 60_000);
    stop = true;
    await writer;
    await writeFile(join(mnt, 'last'), 'done');
    await run('sync', []);

    await run('umount', [mnt]);
    mounted = undefined;
    const fsck = await run('fsck.ext4', ['-fn', loop.device]);
    expect(fsck).toMatch(/\d+\/\d+ files/);
    await run('mount', [loop.device, mnt]);
    mounted = mnt;
    for (const [name, hash] of files) expect(sha(await readFile(join(mnt, name))), name).toBe(hash);
    await run('umount', [mnt]);
    mounted = undefined;
    await loop.detach();
    loop = undefined;

    const s = await st();
    expect(s.failovers).toBeGreaterThanOrEqual(2);
    await until(() => pairInSync(p), 60_000);
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
  }, 300_000);
});
