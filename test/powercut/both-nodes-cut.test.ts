// Regressions found by the power-cut chaos (test/cluster/power-chaos.test.ts): each is one
// deterministic sequence on a pair whose data directories are on the power-cut filesystem, then
// a power cut (of both nodes, or of one whose disk had failed), restart, and the copies compared.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { until, volumeStatus } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { cutAndCompare, loadFaults, startPowerCluster, stopPowerCluster, type PowerCluster } from '../support/power-chaos.js';
import { missingTools } from '../support/tools.js';

const KiB = 1024;

describe.skipIf(missingTools('fusermount3').length > 0)('power cuts after which no log names a write', () => {
  const dirs: string[] = [];
  let cluster: PowerCluster | undefined;
  afterEach(async () => {
    if (cluster) await stopPowerCluster(cluster);
    cluster = undefined;
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  /** A pair on power-cut filesystems (an activity log of two 64 KiB extents, or the chaos's), and a client of node a that wrote 4 KiB at 0: stored on both, flushed nowhere. */
  const pairWithOneWrite = async (smallLog: boolean): Promise<{ c: PowerCluster; client: NbdClient }> => {
    const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-bothcut-'));
    dirs.push(dir);
    const c = (cluster = await startPowerCluster(dir, smallLog ? { activityLog: { extent: 64 * KiB, extents: 2 } } : {}));
    const client = await NbdClient.connect({ port: c.ports.nbdA, exportName: 'vol0' });
    await client.write(0, Buffer.alloc(4 * KiB, 0x11));
    return { c, client };
  };
  /** Writes to extents 1–3 through `client`: with a log of two extents, extent 0 leaves node a's log. */
  const evictExtentZero = async (client: NbdClient): Promise<void> => {
    for (let e = 1; e < 4; e++) await client.write(e * 64 * KiB, Buffer.alloc(4 * KiB, 0x11 + e));
  };
  /** b's disk fails a read (served by a): b Failed, a holds the only good copy. */
  const failDiskOfB = async (c: PowerCluster): Promise<void> => {
    await loadFaults(c, 'b', { rules: [{ op: 'read', errno: 'EIO' }] });
    const cb = await NbdClient.connect({ port: c.ports.nbdB, exportName: 'vol0' });
    await cb.read(1024 * KiB, 4 * KiB);
    cb.close();
    await until(async () => (await volumeStatus(c.ports.adminA)).peerDiskFailed, 10_000);
  };

  // Seed 53112, round 6 (checksum-resync, both cut): verify found 72 KiB out of sync after the
  // recovery. A write's extent left node a's activity log once a had flushed its own data, but
  // b's copy was still unflushed and only a's transfer log (memory) named it: cut both, and no
  // log on either node said the block might differ.
  it('regression evicted-extent-not-durable-on-peer: an extent leaves the log only once its writes are durable on both nodes', async () => {
    const { c, client } = await pairWithOneWrite(true);
    await evictExtentZero(client); // no FLUSH anywhere
    client.close();
    expect(await cutAndCompare(c, ['a', 'b'])).toEqual({ outOfSyncBytes: 0, identical: true });
  }, 120_000);

  // Seed 1001, round 8 of `npm run soak -- --power` (disk-error, then a cut of the failed node):
  // the copies differed by 28 KiB after recovery. A write stored on node a, unflushed; a's disk
  // failed; extents went on leaving a's log — and its "flush" no longer reached the failed disk —
  // then a lost power: the write was gone from a, named by no log, and b had no bit for it.
  it('regression failed-disk-evicted-extent: after a disk fails, extents leave its log only once their writes are durable', async () => {
    const { c, client } = await pairWithOneWrite(true);
    // a's disk fails a write far away (ENOSPC): a goes Failed, b serves and marks what follows.
    await loadFaults(c, 'a', { rules: [{ op: 'write', errno: 'ENOSPC', offset: '32M', length: '1M' }] });
    await client.write(32 * 1024 * KiB, Buffer.alloc(4 * KiB, 0x22));
    await until(async () => (await volumeStatus(c.ports.adminA)).disk === 'Failed', 10_000);
    await evictExtentZero(client);
    client.close();
    expect(await cutAndCompare(c, ['a'])).toEqual({ outOfSyncBytes: 0, identical: true }); // restarted with its faults cleared: the disk repaired
  }, 120_000);

  // power-disk-errors.test.ts (a read EIO on b during a verify round, then a cut of b): b held
  // zeros where a write acknowledged before its disk failed belonged. The write was stored on b,
  // unflushed; a FLUSH after the failure was answered "done" by b's detached disk, so a dropped
  // the write from its transfer log; b lost power: no log or bit named the write any more.
  it('regression detached-disk-flush: a failed disk never answers a flush as done', async () => {
    const { c, client } = await pairWithOneWrite(false);
    await failDiskOfB(c);
    await client.flush();
    client.close();
    expect(await cutAndCompare(c, ['b'])).toEqual({ outOfSyncBytes: 0, identical: true });
  }, 120_000);

  // Soak seed 3003, round 64 (disk-error, then both cut): 12 KiB differed. A write stored on b,
  // unflushed, before b's disk failed; a's extent for it then left a's log (the flush of both
  // copies "succeeds" with a diskless peer) and only a's transfer log (memory) still named it.
  it('regression peer-disk-failed-transfer-log: writes the failed peer never made durable are marked out of sync at once', async () => {
    const { c, client } = await pairWithOneWrite(true);
    await failDiskOfB(c);
    await evictExtentZero(client);
    client.close();
    expect(await cutAndCompare(c, ['a', 'b'])).toEqual({ outOfSyncBytes: 0, identical: true });
  }, 120_000);
});
