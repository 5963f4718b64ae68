// Thin volumes under the mirrored volume, two real node processes: a full pool fails writes on
// both nodes alike (invariant 10) — with the peer's pool the smaller one (the write waits for
// the peer's ENOSPC and is applied nowhere) and with this node's (refused before it is sent) —
// while the link stays up, neither disk fails, another volume stays intact, and verify finds
// both copies identical. Status and metrics show the pool; a raised size grows it on SIGHUP.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fetchStatus } from '../../src/admin/admin-client.js';
import type { NodeStatus } from '../../src/replication/cluster-node.js';
import { run } from '../support/fixture.js';
import { pairPorts, until, writePairConfig } from '../support/cluster.js';
import { cliPath, startClusterNode } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-thin-pair-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const qemuIo = (uri: string, ...cmds: string[]) => run('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])]);
const status = (port: number): Promise<NodeStatus> => fetchStatus({ host: '127.0.0.1', port });
const cli = (args: string[]) => run(process.execPath, [cliPath, ...args]);

describe.skipIf(missingTools('qemu-io', 'fio').length > 0)('mirrored thin volumes', () => {
  it('a full pool fails writes on both nodes alike: link up, disks UpToDate, copies identical', async () => {
    const p = await pairPorts();
    // b's pool is the smaller: a's writes find b full first.
    const config = writePairConfig(join(dir, 'cluster.json'), p, '256M', p.peerB, {
      volumes: { vol0: { size: '256M' }, keep: { size: '64M' } },
      pool: { size: '40M', unit: '1M' },
      nodeB: { pool: { size: '32M' } },
    });
    const a = await startClusterNode(config, 'a');
    const b = await startClusterNode(config, 'b');
    try {
      await until(async () => Object.values((await status(p.adminB)).volumes).every((v) => v.connection === 'Connected' && v.disk === 'UpToDate'));
      await qemuIo(a.uri('keep'), 'write -P 0x77 0 8M', 'flush');
      const fio = await run('fio', ['--name=fill', '--ioengine=nbd', `--uri=${a.uri('vol0')}`, '--rw=randwrite', '--bs=64k', '--iodepth=8', '--size=256M', '--io_size=512M', '--output-format=json']).catch((e: Error) => e.message);
      expect(fio).toMatch(/No space left on device|error=28|"error" : 28/);
      const [sa, sb] = [await status(p.adminA), await status(p.adminB)];
      for (const s of [sa, sb]) {
        for (const v of Object.values(s.volumes)) expect(v).toMatchObject({ connection: 'Connected', disk: 'UpToDate', outOfSyncBytes: 0, peerDiskFailed: false });
      }
      // The same units allocated on both: what b refused, a did not apply either.
      expect(sa.volumes.vol0!.allocatedBytes).toBe(sb.volumes.vol0!.allocatedBytes);
      expect(sb.pool).toMatchObject({ sizeBytes: 32 * MiB, usedBytes: 32 * MiB, unitBytes: MiB, virtualBytes: 320 * MiB });
      expect(sa.pool!.usedBytes).toBe(32 * MiB);
      expect(sa.pool!.overcommit).toBeCloseTo(8, 5);
      // a's own pool still has room; b's has none: a write through b needing a unit is refused
      // by b's reservation, sent nowhere; overwrites and the other volume go on on both.
      await expect(qemuIo(b.uri('vol0'), 'write -P 1 255M 4k')).rejects.toThrow(/No space left on device/);
      await expect(qemuIo(a.uri('vol0'), 'write -P 1 255M 4k')).rejects.toThrow(/No space left on device/);
      await qemuIo(a.uri('keep'), 'read -P 0x77 0 8M', 'write -P 0x78 0 1M', 'read -P 0x78 0 1M');
      await qemuIo(b.uri('keep'), 'read -P 0x78 0 1M', 'read -P 0x77 1M 7M');
      // The link never dropped: connected once, never lost, on either node.
      for (const s of [a, b]) {
        expect(s.logs.filter((l) => l.msg === 'peer link connected')).toHaveLength(1);
        expect(s.logs.filter((l) => l.msg === 'peer link lost')).toEqual([]);
      }
      const verify = JSON.parse(await cli(['verify', '--admin', `127.0.0.1:${p.adminA}`, '--volume', 'vol0', '--json'])) as { outOfSyncBytes: number };
      expect(verify.outOfSyncBytes).toBe(0);
      // Text status and metrics show the pool.
      const text = await cli(['status', '--admin', `127.0.0.1:${p.adminB}`]);
      expect(text).toMatch(/pool 32 MiB of 32 MiB used \(100\.0 %\)\s+over 90 %, 320 MiB in volumes: over-commit 10\.00x/);
      const metrics = await (await fetch(`http://127.0.0.1:${p.adminB}/metrics`)).text();
      expect(metrics).toMatch(/^nbd_mirror_pool_used_bytes\{pool="[^"]+"\} 33554432$/m);
      expect(metrics).toMatch(/^nbd_mirror_pool_thresholds_crossed\{pool="[^"]+"\} 2$/m);
      expect(metrics).toMatch(/^nbd_mirror_volume_allocated_bytes\{volume="keep"\} 8388608$/m);

      // Grown online: b's size raised in the config, SIGHUP, and writes needing units go on.
      const cfg = JSON.parse(readFileSync(config, 'utf8')) as { nodes: { b: { pool: { size: string } } } };
      cfg.nodes.b.pool.size = '48M';
      writeFileSync(config, JSON.stringify(cfg));
      b.proc.kill('SIGHUP');
      await until(async () => (await status(p.adminB)).pool!.sizeBytes === 48 * MiB);
      await qemuIo(a.uri('vol0'), 'write -P 1 255M 4k', 'flush');
      await qemuIo(b.uri('vol0'), 'read -P 1 255M 4k');
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
    for (const node of ['a', 'b']) {
      const report = JSON.parse(await cli(['pool', 'check', '--json', join(dir, node, 'pool.img')])) as { problems: string[] };
      expect(report.problems).toEqual([]);
    }
  });

  it('a full sync of a mostly empty thin volume moves its data, not its size (the source\'s holes skipped, zeros sent as zeroing)', async () => {
    const p = await pairPorts();
    const config = writePairConfig(join(dir, 'join.json'), p, '8G', p.peerB, { pool: { size: '256M', unit: '1M' }, nodeA: { dataDir: 'ja' }, nodeB: { dataDir: 'jb' } });
    // a starts alone and takes writes; b appears later with an empty pool: a full sync.
    const a = await startClusterNode(config, 'a');
    let b;
    try {
      await qemuIo(a.uri('vol0'), 'write -P 0x3c 1G 24M', 'write -P 0x3d 7G 4k', 'write -P 0 4G 8M', 'flush');
      b = await startClusterNode(config, 'b');
      await until(async () => {
        const sb = (await status(p.adminB)).volumes.vol0!;
        return sb.disk === 'UpToDate' && sb.resync === null && sb.lastResync !== null;
      }, 60_000);
      const [sa, sb] = [(await status(p.adminA)).volumes.vol0!, (await status(p.adminB)).volumes.vol0!];
      // The whole 8 GiB was covered, 25 MiB of data crossed the link.
      expect(sb.lastResync).toMatchObject({ role: 'target', bytes: 8 * 1024 * MiB });
      expect(sb.lastResync!.wireBytes).toBe(24 * MiB + MiB);
      // The same units allocated on both: the zeros written on a allocated nothing there either.
      expect(sb.allocatedBytes).toBe(25 * MiB);
      expect(sa.allocatedBytes).toBe(25 * MiB);
      await qemuIo(b.uri('vol0'), 'read -P 0x3c 1G 24M', 'read -P 0x3d 7G 4k', 'read -P 0 7516196864 1020k', 'read -P 0 4G 8M', 'read -P 0 0 1M');
      const verify = JSON.parse(await cli(['verify', '--admin', `127.0.0.1:${p.adminA}`, '--volume', 'vol0', '--json'])) as { outOfSyncBytes: number };
      expect(verify.outOfSyncBytes).toBe(0);
    } finally {
      await Promise.all([a.stop(), b?.stop()]);
    }
  });

  it('onFull queue: a write needing a unit waits for space on a full pair and lands on both when units are freed', async () => {
    const p = await pairPorts();
    const config = writePairConfig(join(dir, 'queue.json'), p, '64M', p.peerB, {
      volumes: { vol0: { size: '64M' }, other: { size: '64M' } },
      pool: { size: '8M', unit: '1M', onFull: 'queue', holdTimeout: '20s' },
      nodeA: { dataDir: 'qa' },
      nodeB: { dataDir: 'qb' },
    });
    const a = await startClusterNode(config, 'a');
    const b = await startClusterNode(config, 'b');
    try {
      await until(async () => Object.values((await status(p.adminB)).volumes).every((v) => v.connection === 'Connected' && v.disk === 'UpToDate'));
      await qemuIo(a.uri('other'), 'write -P 0x44 0 8M', 'flush');
      // The pool is full on both nodes: this write waits (it needs a unit) while others go on.
      const held = qemuIo(a.uri('vol0'), 'write -P 0x55 0 4k', 'flush');
      let settled = false;
      void held.finally(() => (settled = true));
      // No event says "still waiting": half a second of not settling is the evidence.
      await new Promise((r) => setTimeout(r, 500));
      expect(settled).toBe(false);
      await qemuIo(b.uri('other'), 'write -P 0x45 0 4k', 'read -P 0x45 0 4k');
      // Free two units through node b: the held write goes on and lands on both nodes.
      await qemuIo(b.uri('other'), 'discard 6M 2M', 'flush');
      await held;
      await qemuIo(b.uri('vol0'), 'read -P 0x55 0 4k');
      const [sa, sb] = [await status(p.adminA), await status(p.adminB)];
      for (const s of [sa, sb]) expect(s.volumes.vol0).toMatchObject({ connection: 'Connected', disk: 'UpToDate', outOfSyncBytes: 0, allocatedBytes: MiB });
      expect(sa.pool!.usedBytes).toBe(sb.pool!.usedBytes);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });
});
