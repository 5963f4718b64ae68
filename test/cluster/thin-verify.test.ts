// `nbd-mirror verify` of a mostly empty thin volume, two real node processes: ranges that are
// holes on both nodes are skipped from the two allocation maps (one round trip per GiB, no
// digests: skippedHoleBytes), so a 64 GiB virtual volume with a few MiB written verifies in a
// fraction of what walking it would take, finds 0 differences, and still finds differences
// planted in one node's pool only (the node stopped, its pool written through `serve --pool`
// standalone, the node started again): a corrupted allocated block, data on b where a has a
// hole, and data on a where b has a hole.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fetchStatus } from '../../src/admin/admin-client.js';
import { run } from '../support/fixture.js';
import { pairPorts, until, writePairConfig } from '../support/cluster.js';
import { cliPath, startClusterNode, startNbdMirror } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

const MiB = 1 << 20;
const GiB = 1 << 30;
const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-thin-verify-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const qemuIo = (uri: string, ...cmds: string[]) => run('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])]);
const volume = async (port: number) => (await fetchStatus({ host: '127.0.0.1', port })).volumes.vol0!;
interface Verified {
  outOfSyncBytes: number;
  holeBytes: number;
  skippedHoleBytes: number;
  totalBytes: number;
  ranges: Array<{ offset: number; length: number }>;
}
/** Runs `nbd-mirror verify` through node a; `ms`: how long it took. Exit 1 means differences found. */
async function verify(admin: number): Promise<Verified & { ms: number }> {
  const t0 = performance.now();
  const out = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, [cliPath, 'verify', '--admin', `127.0.0.1:${admin}`, '--volume', 'vol0', '--json'], { timeout: 120_000 }, (err, stdout, stderr) => {
      if (err && (err as { code?: unknown }).code !== 1) reject(new Error(`verify failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
  return { ...(JSON.parse(out) as Verified), ms: performance.now() - t0 };
}

describe.skipIf(missingTools('qemu-io').length > 0)('verify of thin volumes', () => {
  it('a 64 GiB thin volume with a few MiB written skips the common holes, finds 0 differences, and finds each planted in one pool', async () => {
    const p = await pairPorts();
    const config = writePairConfig(join(dir, 'cluster.json'), p, '64G', p.peerB, { pool: { size: '256M', unit: '1M' }, nodeA: { dataDir: 'va' }, nodeB: { dataDir: 'vb' } });
    let a = await startClusterNode(config, 'a');
    let b = await startClusterNode(config, 'b');
    const settled = () => until(async () => (await volume(p.adminA)).connection === 'Connected' && (await volume(p.adminA)).disk === 'UpToDate' && (await volume(p.adminB)).disk === 'UpToDate', 60_000);
    /** Stops a node, writes its pool behind the cluster's back, starts it again. */
    const plant = async (node: 'a' | 'b', ...cmds: string[]) => {
      await (node === 'a' ? a : b).stop();
      const alone = await startNbdMirror(['--pool', join(dir, `v${node}`, 'pool.img'), '--thin', 'vol0=64G']);
      try {
        await qemuIo(alone.uri('vol0'), ...cmds, 'flush');
      } finally {
        await alone.stop();
      }
      if (node === 'a') a = await startClusterNode(config, 'a');
      else b = await startClusterNode(config, 'b');
      await settled();
    };
    try {
      await settled();
      await qemuIo(a.uri('vol0'), 'write -P 0x5a 1G 4M', 'write -P 0x5b 7G 4k', 'flush');
      const clean = await verify(p.adminA);
      expect(clean.outOfSyncBytes).toBe(0);
      expect(clean.totalBytes).toBe(64 * GiB);
      // Allocated on both: the four 1 MiB units at 1 GiB and the one at 7 GiB; the rest skipped.
      expect(clean.skippedHoleBytes).toBe(64 * GiB - 5 * MiB);
      expect(clean.holeBytes).toBe(0);
      // The bound only catches a walk gone very wrong (a 1 MiB round trip per chunk took ~10 s).
      expect(clean.ms).toBeLessThan(30_000);

      // b: data at 3 GiB (a hole on a), one block of a's data at 1 GiB changed.
      await plant('b', 'write -P 0xee 3G 4k', 'write -P 0xef 1G 4k');
      // a: data at 5 GiB (a hole on b).
      await plant('a', 'write -P 0xed 5G 4k');
      const found = await verify(p.adminA);
      expect(found.ranges).toEqual([
        { offset: GiB, length: 4096 },
        { offset: 3 * GiB, length: 4096 },
        { offset: 5 * GiB, length: 4096 },
      ]);
      expect(found.outOfSyncBytes).toBe(3 * 4096);
      // Compared: the five units allocated on both, the one at 3 GiB (a hole on a: not read
      // there) and the one at 5 GiB (a hole on b).
      expect(found.skippedHoleBytes).toBe(64 * GiB - 7 * MiB);
      expect(found.holeBytes).toBe(MiB);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });
});
