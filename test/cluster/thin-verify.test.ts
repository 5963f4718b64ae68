// `nbd-mirror verify` of a mostly empty thin volume, two real node processes: ranges that are
// holes are neither read nor hashed on either side (they compare as zero blocks), so an 8 GiB
// virtual volume with a few MiB written verifies in a fraction of what reading it would take,
// finds 0 differences, and still finds a difference planted in one node's pool only (b stopped,
// its pool written through `serve --pool` standalone, b started again) — in a hole of a's copy.
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
  it('an 8 GiB thin volume with a few MiB written verifies fast, finds 0 differences, and finds one planted in one pool', async () => {
    const p = await pairPorts();
    const config = writePairConfig(join(dir, 'cluster.json'), p, '8G', p.peerB, { pool: { size: '256M', unit: '1M' }, nodeA: { dataDir: 'va' }, nodeB: { dataDir: 'vb' } });
    const a = await startClusterNode(config, 'a');
    let b = await startClusterNode(config, 'b');
    try {
      await until(async () => (await volume(p.adminA)).connection === 'Connected' && (await volume(p.adminB)).disk === 'UpToDate', 60_000);
      await qemuIo(a.uri('vol0'), 'write -P 0x5a 1G 4M', 'write -P 0x5b 7G 4k', 'flush');
      const clean = await verify(p.adminA);
      expect(clean.outOfSyncBytes).toBe(0);
      // a read only the 1 MiB chunks with data: 4 at 1 GiB, 1 at 7 GiB.
      expect(clean.totalBytes - clean.holeBytes).toBe(5 * MiB);
      // Holes cost a round trip per 1 MiB and no read: 1.2 s here where reading and hashing the
      // 8 GiB took 3.0 s (2 cores, loaded); the bound only catches a walk gone very wrong.
      expect(clean.ms).toBeLessThan(15_000);

      // b stopped, its pool written behind the cluster's back, b started again.
      await b.stop();
      const alone = await startNbdMirror(['--pool', join(dir, 'vb', 'pool.img'), '--thin', 'vol0=8G']);
      try {
        await qemuIo(alone.uri('vol0'), 'write -P 0xee 3G 4k', 'write -P 0xef 1G 4k', 'flush');
      } finally {
        await alone.stop();
      }
      b = await startClusterNode(config, 'b');
      await until(async () => (await volume(p.adminA)).connection === 'Connected' && (await volume(p.adminB)).disk === 'UpToDate', 60_000);
      const found = await verify(p.adminA);
      // One in a hole of a's copy (a reads nothing there), one in allocated data.
      expect(found.ranges).toEqual([
        { offset: GiB, length: 4096 },
        { offset: 3 * GiB, length: 4096 },
      ]);
      expect(found.outOfSyncBytes).toBe(8192);
      expect(found.totalBytes - found.holeBytes).toBe(5 * MiB);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });
});
