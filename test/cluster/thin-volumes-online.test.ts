// Volumes online on a thin-pool pair (the pool as the VolumeStore): a volume created online takes
// units on both nodes only as it is written, survives a restart of both nodes (its pool table
// entry committed), grows in place, and its deletion gives its units back on both pools — with
// `pool check` finding no problem on either.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fetchStatus } from '../../src/admin/admin-client.js';
import type { NodeStatus } from '../../src/replication/cluster-node.js';
import { keygen } from '../../src/security/keygen.js';
import { run } from '../support/fixture.js';
import { pairPorts, until, writePairConfig } from '../support/cluster.js';
import { cliPath, startClusterNode, type RunningServer } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-thin-online-'));
const running: RunningServer[] = [];
afterAll(async () => {
  for (const r of running) await r.stop('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

const qemuIo = (uri: string, ...cmds: string[]) => run('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])]);
const status = (port: number): Promise<NodeStatus> => fetchStatus({ host: '127.0.0.1', port });
const cli = (args: string[]) => run(process.execPath, [cliPath, ...args]);

describe.skipIf(missingTools('qemu-io', 'nbdinfo').length > 0)('volumes online in a thin pool', () => {
  it('create, write, restart, grow and delete: units taken as written and given back on both pools', async () => {
    const p = await pairPorts();
    keygen(dir, 'refuse');
    const config = writePairConfig(join(dir, 'cluster.json'), p, '16M', p.peerB, { pool: { size: '64M', unit: '1M' }, security: { adminToken: 'admin.token' } });
    const start = async () => {
      const nodes = [await startClusterNode(config, 'a'), await startClusterNode(config, 'b')];
      running.push(...nodes);
      return nodes as [RunningServer, RunningServer];
    };
    const inSync = (name: string) => async () => {
      for (const port of [p.adminA, p.adminB]) {
        const v = (await status(port)).volumes[name];
        if (v?.connection !== 'Connected' || v.disk !== 'UpToDate') return false;
      }
      return true;
    };
    const used = async () => Promise.all([p.adminA, p.adminB].map(async (port) => (await status(port)).pool!.usedBytes));
    let [a, b] = await start();
    await until(inSync('vol0'));
    const before = await used();

    expect(await cli(['volume', 'create', 'vm1', '--size', '256M', '--config', config, '--node', 'a'])).toMatch(/done on b and a/);
    await until(inSync('vm1'));
    // Over-committed (256 MiB in a 64 MiB pool) and nothing allocated until written.
    expect(await used()).toEqual(before);
    await qemuIo(a.uri('vm1'), 'write -P 0x5a 0 2M', 'write -P 0x5b 200M 1M', 'flush');
    expect(await used()).toEqual(before.map((u) => u + 3 * MiB));
    for (const port of [p.adminA, p.adminB]) expect((await status(port)).volumes.vm1!.allocatedBytes).toBe(3 * MiB);

    // A restart of both keeps the volume and its data (the pool's table entry was committed).
    await a.stop('SIGTERM');
    await b.stop('SIGTERM');
    [a, b] = await start();
    await until(inSync('vm1'));
    await qemuIo(b.uri('vm1'), 'read -P 0x5a 0 2M', 'read -P 0x5b 200M 1M', 'read -P 0 2M 198M');

    expect(await cli(['volume', 'resize', 'vm1', '--size', '512M', '--config', config, '--node', 'b'])).toMatch(/done on a and b/);
    await until(inSync('vm1'));
    for (const uri of [a.uri('vm1'), b.uri('vm1')]) expect((await run('nbdinfo', ['--size', uri])).trim()).toBe(String(512 * MiB));
    await qemuIo(b.uri('vm1'), 'write -P 0x5c 500M 1M', 'flush');
    await qemuIo(a.uri('vm1'), 'read -P 0x5c 500M 1M', 'read -P 0x5a 0 2M', 'read -P 0 256M 244M');
    expect(await used()).toEqual(before.map((u) => u + 4 * MiB));

    expect(await cli(['volume', 'delete', 'vm1', '--config', config, '--node', 'a'])).toMatch(/done on b and a/);
    // Its units are free again on both once the deletion's commit is durable.
    await until(async () => (await used()).every((u, i) => u === before[i]));
    for (const node of ['a', 'b']) {
      const report = JSON.parse(await cli(['pool', 'check', join(dir, node, 'pool.img'), '--json'])) as { problems: string[]; volumes: Array<{ name: string }> };
      expect(report.problems).toEqual([]);
      expect(report.volumes.map((v) => v.name)).toEqual(['vol0']);
    }
  });
});
