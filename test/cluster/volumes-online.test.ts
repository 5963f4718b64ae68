// Volumes created, grown and deleted online, with real node processes and real clients: the
// command line (`nbd-mirror volume …`, authenticated through the config's admin token) asks one
// node; both change. A created volume is served and mirrored at once (qemu-io writes on a, reads
// on b), grows with its data kept (nbdinfo sees the new size on both), survives a restart of
// both nodes, and its deletion removes the export and the files on both. A resize keeps the
// clients writing on both nodes; a delete is refused while a volume has clients, unless --force.
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fetchStatus } from '../../src/admin/admin-client.js';
import { keygen } from '../../src/security/keygen.js';
import { pairPorts, until, writePairConfig, type PairPorts } from '../support/cluster.js';
import { run, runCli } from '../support/fixture.js';
import { NbdClient } from '../support/nbd-client.js';
import { startClusterNode, type RunningServer } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

const MiB = 2 ** 20;

const cli = runCli;

const missing = missingTools('qemu-io', 'qemu-img', 'nbdinfo');

describe.skipIf(missing.length > 0)('volumes online (real processes)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-volumes-online-'));
  const running: RunningServer[] = [];
  let p: PairPorts;
  let config: string;
  let a: RunningServer;
  let b: RunningServer;
  const volume = (node: 'a' | 'b', verb: string, name: string, ...rest: string[]) => cli(['volume', verb, name, '--config', config, '--node', node, ...rest]);
  const uri = (node: 'a' | 'b', name: string) => `nbd://127.0.0.1:${node === 'a' ? p.nbdA : p.nbdB}/${name}`;
  const state = async (node: 'a' | 'b', name: string) => (await fetchStatus({ host: '127.0.0.1', port: node === 'a' ? p.adminA : p.adminB })).volumes[name];
  const mirrored = async (name: string) => {
    for (const node of ['a', 'b'] as const) {
      const v = await state(node, name);
      if (v?.connection !== 'Connected' || v.replication !== 'Connected' || v.disk !== 'UpToDate') return false;
    }
    return true;
  };
  const start = async () => {
    a = await startClusterNode(config, 'a');
    b = await startClusterNode(config, 'b');
    running.push(a, b);
    await until(() => mirrored('vol0'));
  };

  beforeAll(async () => {
    p = await pairPorts();
    keygen(dir, 'refuse');
    config = writePairConfig(join(dir, 'cluster.json'), p, '16M', p.peerB, { security: { adminToken: 'admin.token' } });
    await start();
  });
  afterAll(async () => {
    for (const r of running) await r.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('creates a volume through node a: served and mirrored at once on both nodes', async () => {
    const res = await volume('a', 'create', 'vol1', '--size', '32M');
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/create volume vol1 to 32 MiB \(33554432 bytes\): done on b and a/);
    await until(() => mirrored('vol1'));
    await run('qemu-io', ['-f', 'raw', uri('a', 'vol1'), '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0xcd 31M 1M']);
    await run('qemu-io', ['-f', 'raw', uri('b', 'vol1'), '-c', 'read -P 0xab 0 1M', '-c', 'read -P 0xcd 31M 1M', '-c', 'read -P 0 1M 30M']);
    for (const node of ['a', 'b'] as const) {
      expect((await run('nbdinfo', ['--size', uri(node, 'vol1')])).trim()).toBe(String(32 * MiB));
      expect(JSON.parse(readFileSync(join(dir, node, 'volumes.json'), 'utf8')).volumes).toEqual({ vol0: { size: 16 * MiB, checksumResync: false }, vol1: { size: 32 * MiB, checksumResync: false } });
    }
    // The text status and the metrics show it too.
    expect((await cli(['status', '--config', config, '--node', 'b'])).stdout).toMatch(/vol1: Connected UpToDate/);
    expect(await (await fetch(`http://127.0.0.1:${p.adminA}/metrics`)).text()).toMatch(/nbd_mirror_volume_disk_state\{volume="vol1",state="UpToDate"\} 1/);
  });

  it('refuses a second create of the name, a resize of a missing volume, a shrink, and changes nothing', async () => {
    const again = await volume('b', 'create', 'vol1', '--size', '64M');
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/volume vol1 exists on b/);
    const missingOne = await volume('a', 'resize', 'nope', '--size', '64M');
    expect(missingOne.stderr).toMatch(/no volume nope on a/);
    const shrink = await volume('a', 'resize', 'vol1', '--size', '16M');
    expect(shrink.stderr).toMatch(/volumes only grow: vol1 is 33554432 bytes, 16777216 asked/);
    for (const node of ['a', 'b'] as const) expect((await run('nbdinfo', ['--size', uri(node, 'vol1')])).trim()).toBe(String(32 * MiB));
    expect(await mirrored('vol1')).toBe(true);
  });

  it('grows a volume through node b while clients write on both nodes: they go on, new connections see the new size', async () => {
    // Clients on both nodes write all along (each its own range, bounded in count); the resize
    // holds their changes for a moment and lets them go on.
    const writers = await Promise.all([NbdClient.connect({ port: p.nbdA, exportName: 'vol1' }), NbdClient.connect({ port: p.nbdB, exportName: 'vol1' })]);
    let writing = true;
    const writes = writers.map(async (c, i) => {
      let n = 0;
      for (; writing && n < 50_000; n++) await c.write((2 + i) * MiB + (n % 64) * 4096, Buffer.alloc(4096, (n + i) & 0xff));
      return n;
    });
    await new Promise((res) => setTimeout(res, 200)); // some writes before the resize (no event to wait for)
    const res = await volume('b', 'resize', 'vol1', '--size', '64M');
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/grow volume vol1 to 64 MiB \(67108864 bytes\): done on a and b/);
    // Still connected, still writing; they keep the size they negotiated.
    const after = await Promise.all(writers.map((c) => c.read(2 * MiB, 4096)));
    expect(after).toHaveLength(2);
    expect(writers.every((c) => c.info.size === 32 * MiB)).toBe(true);
    writing = false;
    expect(Math.min(...(await Promise.all(writes)))).toBeGreaterThan(0);
    await Promise.all(writers.map((c) => c.flush()));
    writers.forEach((c) => c.close());
    await until(() => mirrored('vol1'));
    for (const node of ['a', 'b'] as const) expect((await run('nbdinfo', ['--size', uri(node, 'vol1')])).trim()).toBe(String(64 * MiB));
    // The copies are identical, the old data kept, the new range zeroes and mirrored.
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri('a', 'vol1'), uri('b', 'vol1')]);
    await run('qemu-io', ['-f', 'raw', uri('b', 'vol1'), '-c', 'read -P 0xab 0 1M', '-c', 'read -P 0xcd 31M 1M', '-c', 'read -P 0 32M 32M', '-c', 'write -P 0xef 60M 1M']);
    await run('qemu-io', ['-f', 'raw', uri('a', 'vol1'), '-c', 'read -P 0xef 60M 1M', '-c', 'read -P 0xab 0 1M']);
    for (const node of ['a', 'b'] as const) {
      expect((await state(node, 'vol1'))!.outOfSyncBytes).toBe(0);
      // The bitmap covers the new size (one bit per 4 KiB), the activity log behind it.
      expect(statSync(join(dir, node, 'vol1.meta')).size).toBe(4096 + 4096 + 2 * 4096);
    }
    const grown = [b, a].map((n) => n.logs.find((l) => l.msg === 'volume grown online' && l.volume === 'vol1')!);
    console.log(`grown online while writing: held writes ${grown.map((l, i) => `${'ba'[i]} ${l.heldMs} ms (${l.heldChanges} client changes, ${l.heldFrames} peer frames)`).join(', ')}`);
    expect(grown.every((l) => typeof l.heldMs === 'number')).toBe(true);
  });

  it('keeps the volumes across a restart of both nodes, with their data', async () => {
    await Promise.all([a.stop(), b.stop()]);
    await start();
    await until(() => mirrored('vol1'));
    for (const node of ['a', 'b'] as const) expect((await run('nbdinfo', ['--size', uri(node, 'vol1')])).trim()).toBe(String(64 * MiB));
    await run('qemu-io', ['-f', 'raw', uri('b', 'vol1'), '-c', 'read -P 0xab 0 1M', '-c', 'read -P 0xef 60M 1M']);
    // A full link resync never ran for it: it was in sync from its creation on.
    expect((await state('a', 'vol1'))!.resyncedBytesTotal).toBe(0);
  });

  it('finishes at start a growth that a crash cut short (its new size recorded, files not grown yet)', async () => {
    // Both nodes die; each volumes file already says 96M (the first step of a resize), the data
    // and metadata are still 64M, and the metadata was left open (a crash).
    await Promise.all([a.stop('SIGKILL'), b.stop('SIGKILL')]);
    for (const node of ['a', 'b'] as const) {
      const path = join(dir, node, 'volumes.json');
      const file = JSON.parse(readFileSync(path, 'utf8'));
      file.volumes.vol1.size = 96 * MiB;
      writeFileSync(path, JSON.stringify(file));
    }
    await start();
    await until(() => mirrored('vol1'));
    for (const node of ['a', 'b'] as const) {
      expect((await run('nbdinfo', ['--size', uri(node, 'vol1')])).trim()).toBe(String(96 * MiB));
      expect(statSync(join(dir, node, 'vol1.img')).size).toBe(96 * MiB);
    }
    expect(a.logs.some((l) => l.msg === 'finishing a resize that a stop cut short' && l.volume === 'vol1')).toBe(true);
    await run('qemu-io', ['-f', 'raw', uri('b', 'vol1'), '-c', 'read -P 0xab 0 1M', '-c', 'read -P 0xef 60M 1M', '-c', 'read -P 0 64M 32M']);
  });

  it('a node whose volumes differ in a way no recorded change explains stays unlinked, and is repaired through its volumes file, as docs/OPERATIONS.md says', async () => {
    expect((await volume('a', 'create', 'vol2', '--size', '8M')).code).toBe(0);
    await run('qemu-io', ['-f', 'raw', uri('a', 'vol2'), '-c', 'write -P 0x5a 0 1M']);
    // b as if its data folder were restored from before the change: no entry, no files, nothing
    // unfinished on either node (a change the link cut short repairs itself: volumes-online-cut.test.ts).
    await b.stop();
    const path = join(dir, 'b', 'volumes.json');
    const recorded = JSON.parse(readFileSync(path, 'utf8'));
    const entry = recorded.volumes.vol2;
    delete recorded.volumes.vol2;
    writeFileSync(path, JSON.stringify(recorded));
    rmSync(join(dir, 'b', 'vol2.img'));
    rmSync(join(dir, 'b', 'vol2.meta'));
    b = await startClusterNode(config, 'b');
    running.push(b);
    await until(() => b.logs.some((l) => l.msg === 'refusing the peer link' && /peer has volume "vol2", we do not/.test(String(l.reason))));
    expect((await fetchStatus({ host: '127.0.0.1', port: p.adminB })).peer).not.toBe('Connected');
    // The repair: b's file made to match a's for that volume, b started again.
    await b.stop();
    recorded.volumes.vol2 = entry;
    writeFileSync(path, JSON.stringify(recorded));
    b = await startClusterNode(config, 'b');
    running.push(b);
    await until(() => mirrored('vol2'));
    await until(() => mirrored('vol1'));
    await run('qemu-io', ['-f', 'raw', uri('b', 'vol2'), '-c', 'read -P 0x5a 0 1M', '-c', 'read -P 0 1M 7M']);
    expect((await state('b', 'vol2'))!.lastResync).toMatchObject({ role: 'target' });
    expect((await volume('b', 'delete', 'vol2')).code).toBe(0);
  });

  it('deletes a volume through node a: the export and the files are gone on both nodes; a config volume stays deleted', async () => {
    const client = await NbdClient.connect({ port: p.nbdB, exportName: 'vol1' });
    const dropped = once(client.socket, 'close');
    const held = await volume('a', 'delete', 'vol1');
    expect(held.stderr).toMatch(/1 NBD client is connected to vol1 on b: disconnect it first, or give --force to drop it/);
    expect((await run('nbdinfo', ['--size', uri('a', 'vol1')])).trim()).toBe(String(96 * MiB));
    // --force drops the client (on b, the node not asked) and deletes.
    const res = await volume('a', 'delete', 'vol1', '--force');
    expect(res.code, res.stderr).toBe(0);
    await dropped;
    for (const node of ['a', 'b'] as const) {
      await expect(run('nbdinfo', ['--size', uri(node, 'vol1')])).rejects.toThrow();
      expect(existsSync(join(dir, node, 'vol1.img'))).toBe(false);
      expect(existsSync(join(dir, node, 'vol1.meta'))).toBe(false);
      expect(await state(node, 'vol1')).toBeUndefined();
    }
    // vol0 comes from the config: deleted online, it stays deleted after a restart.
    expect((await volume('b', 'delete', 'vol0')).code).toBe(0);
    await Promise.all([a.stop(), b.stop()]);
    a = await startClusterNode(config, 'a');
    b = await startClusterNode(config, 'b');
    running.push(a, b);
    for (const node of ['a', 'b'] as const) {
      expect(JSON.parse(readFileSync(join(dir, node, 'volumes.json'), 'utf8'))).toEqual({ version: 1, volumes: {}, deleted: ['vol0'] });
      expect((await fetchStatus({ host: '127.0.0.1', port: node === 'a' ? p.adminA : p.adminB })).volumes).toEqual({});
    }
    expect(a.logs.some((l) => l.msg === 'volume config and volumes file differ' && l.volume === 'vol0')).toBe(true);
    // And it can be created again, empty, once both are linked.
    await until(async () => (await fetchStatus({ host: '127.0.0.1', port: p.adminA })).peer === 'Connected');
    const again = await volume('a', 'create', 'vol0', '--size', '8M');
    expect(again.code, again.stderr).toBe(0);
    await until(() => mirrored('vol0'));
    await run('qemu-io', ['-f', 'raw', uri('b', 'vol0'), '-c', 'read -P 0 0 8M']);
  });
});
