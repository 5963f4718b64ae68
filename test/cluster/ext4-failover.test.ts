// A real filesystem across fail-over and fail-back: ext4 made and filled through node a; a is
// killed (-9); the same filesystem mounted through node b, checked, and written while a is
// away; a returns and resyncs by itself; mounted through a, every file of both phases is there
// and fsck finds the filesystem clean through either node.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dataFile, pairPorts, until, volumeStatus, writePairConfig } from '../support/cluster.js';
import { run } from '../support/fixture.js';
import { attachLoop, canMountNbdfuse, type LoopDevice } from '../support/nbdfuse.js';
import { startClusterNode, type RunningServer } from '../support/processes.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe.skipIf(!canMountNbdfuse('ext4 fail-over test'))('ext4 on the mirrored pair across fail-over and fail-back', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-ext4-'));
  const procs: RunningServer[] = [];
  let attached: { loop: LoopDevice; mnt?: string } | undefined;
  afterAll(async () => {
    await attached?.loop.detach(attached.mnt);
    for (const p of procs) await p.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  /** Mounts the volume through one node, runs `body` on the mount point, unmounts. */
  async function throughNode(port: number, name: string, body: (mnt: string) => void): Promise<string> {
    const where = join(dir, name);
    const mnt = join(where, 'mnt');
    mkdirSync(mnt, { recursive: true });
    const loop = await attachLoop(`nbd://127.0.0.1:${port}/vol0`, where);
    attached = { loop };
    try {
      await run('mount', [loop.device, mnt]);
      attached.mnt = mnt;
      body(mnt);
      await run('umount', [mnt]);
      attached.mnt = undefined;
      return await run('fsck.ext4', ['-fn', loop.device]);
    } finally {
      await loop.detach(attached.mnt);
      attached = undefined;
    }
  }

  it('files written through a, then through b while a is dead, are all there through a after it resyncs', async () => {
    const p = await pairPorts();
    const config = writePairConfig(join(dir, 'cluster.json'), p, '128M');
    let a = await startClusterNode(config, 'a');
    const b = await startClusterNode(config, 'b');
    procs.push(a, b);
    await until(async () => (await volumeStatus(p.adminB)).disk === 'UpToDate' && (await volumeStatus(p.adminA)).connection === 'Connected');

    const first = Array.from({ length: 4 }, (_, i) => ({ name: `a${i}`, data: randomBytes((i + 1) * 2_000_000) }));
    const second = Array.from({ length: 4 }, (_, i) => ({ name: `b${i}`, data: randomBytes((i + 1) * 1_500_000) }));
    const fresh = join(dir, 'mkfs');
    mkdirSync(fresh);
    const loop = await attachLoop(`nbd://127.0.0.1:${p.nbdA}/vol0`, fresh);
    await run('mkfs.ext4', ['-q', '-F', loop.device]).finally(() => loop.detach());
    await throughNode(p.nbdA, 'via-a', (mnt) => first.forEach((f) => writeFileSync(join(mnt, f.name), f.data)));

    await a.stop('SIGKILL');
    await until(async () => (await volumeStatus(p.adminB)).connection !== 'Connected');
    const fsckB = await throughNode(p.nbdB, 'via-b', (mnt) => {
      for (const f of first) expect(sha(readFileSync(join(mnt, f.name))), f.name).toBe(sha(f.data));
      for (const f of second) writeFileSync(join(mnt, f.name), f.data);
    });
    expect(fsckB).toMatch(/\d+\/\d+ files/);
    expect((await volumeStatus(p.adminB)).outOfSyncBytes).toBeGreaterThan(0);

    a = await startClusterNode(config, 'a');
    procs.push(a);
    await until(async () => {
      const [sa, sb] = [await volumeStatus(p.adminA), await volumeStatus(p.adminB)];
      return sa.disk === 'UpToDate' && sa.resync === null && sa.outOfSyncBytes === 0 && sb.outOfSyncBytes === 0 && sb.connection === 'Connected';
    });
    const fsckA = await throughNode(p.nbdA, 'via-a-again', (mnt) => {
      for (const f of [...first, ...second]) expect(sha(readFileSync(join(mnt, f.name))), f.name).toBe(sha(f.data));
    });
    expect(fsckA).toMatch(/\d+\/\d+ files/);
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
  });
});
