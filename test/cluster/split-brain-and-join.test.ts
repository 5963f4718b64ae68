// Real processes: both nodes write while the link is cut (split brain: detected, nothing
// overwritten, both keep serving), and a fresh empty node joining a used volume (full sync).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { dataFile, pairPorts, until, volumeStatus, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { run } from '../support/fixture.js';
import { cliPath, startClusterNode, type RunningServer } from '../support/processes.js';
import { TcpProxy } from '../support/tcp-proxy.js';

const MiB = 2 ** 20;
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-cluster-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function track(r: RunningServer): RunningServer {
  cleanups.push(() => r.stop('SIGKILL'));
  return r;
}

describe('two-node cluster: divergence and joining', () => {
  it('split brain: detected on reconnect, nothing overwritten, both serve; resolve discards one side', async () => {
    const dir = tempDir();
    const p = await pairPorts();
    const proxy = new TcpProxy({ host: '127.0.0.1', port: p.peerB });
    await proxy.start();
    cleanups.push(() => proxy.stop());
    track(await startClusterNode(writePairConfig(join(dir, 'a.json'), p, '16M', proxy.port), 'a'));
    track(await startClusterNode(writePairConfig(join(dir, 'b.json'), p, '16M'), 'b'));
    await until(async () => (await volumeStatus(p.adminA)).connection === 'Connected' && (await volumeStatus(p.adminB)).disk === 'UpToDate');
    proxy.cut();
    await until(async () => (await volumeStatus(p.adminA)).connection !== 'Connected' && (await volumeStatus(p.adminB)).connection !== 'Connected');
    const a = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    const b = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    await a.write(0, Buffer.alloc(65536, 0xaa));
    await b.write(0, Buffer.alloc(65536, 0xbb));
    await Promise.all([a.flush(), b.flush()]);
    proxy.restore();
    await until(async () => (await volumeStatus(p.adminA)).connection === 'StandAlone' && (await volumeStatus(p.adminB)).connection === 'StandAlone');
    // Each side kept its own data; both still serve reads and writes.
    expect((await a.read(0, 4096)).every((x) => x === 0xaa)).toBe(true);
    expect((await b.read(0, 4096)).every((x) => x === 0xbb)).toBe(true);
    await a.write(MiB, Buffer.alloc(4096, 1));
    expect((await volumeStatus(p.adminA)).outOfSyncBytes).toBe(65536 + 4096);

    // The operator discards b's changes; sent to the wrong node it is refused with a reason.
    const resolve = (admin: number, node: string) => run(process.execPath, [cliPath, 'resolve', '--admin', `127.0.0.1:${admin}`, '--volume', 'vol0', '--discard', node]);
    await expect(resolve(p.adminA, 'b')).rejects.toThrow(/send the resolve to the admin address of node b/);
    expect(await resolve(p.adminB, 'b')).toMatch(/node b discards its changes/);
    await until(async () => {
      const [sa, sb] = [await volumeStatus(p.adminA), await volumeStatus(p.adminB)];
      return sa.connection === 'Connected' && sb.connection === 'Connected' && sb.disk === 'UpToDate' && sb.resync === null && sa.outOfSyncBytes === 0 && sb.outOfSyncBytes === 0;
    });
    expect((await b.read(0, 65536)).every((x) => x === 0xaa)).toBe(true);
    expect((await b.read(MiB, 4096)).every((x) => x === 1)).toBe(true);
    await Promise.all([a.flush(), b.flush()]);
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
    a.close();
    b.close();
  });

  it('split brain with policy discard-least-changes: the node that changed less discards its changes by itself, logged with both sides', async () => {
    const dir = tempDir();
    const p = await pairPorts();
    const proxy = new TcpProxy({ host: '127.0.0.1', port: p.peerB });
    await proxy.start();
    cleanups.push(() => proxy.stop());
    const policy = { splitBrain: { policy: 'discard-least-changes' } };
    const nodeA = track(await startClusterNode(writePairConfig(join(dir, 'a.json'), p, '16M', proxy.port, policy), 'a'));
    track(await startClusterNode(writePairConfig(join(dir, 'b.json'), p, '16M', p.peerB, policy), 'b'));
    await until(async () => (await volumeStatus(p.adminA)).connection === 'Connected' && (await volumeStatus(p.adminB)).disk === 'UpToDate');
    proxy.cut();
    await until(async () => (await volumeStatus(p.adminA)).connection !== 'Connected' && (await volumeStatus(p.adminB)).connection !== 'Connected');
    const a = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    const b = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    await a.write(MiB, Buffer.alloc(MiB, 0xaa)); // a changes 1 MiB
    await b.write(4 * MiB, Buffer.alloc(3 * MiB, 0xbb)); // b changes 3 MiB: b wins
    await Promise.all([a.flush(), b.flush()]);
    proxy.restore();
    await until(async () => {
      const [sa, sb] = [await volumeStatus(p.adminA), await volumeStatus(p.adminB)];
      return sa.connection === 'Connected' && sb.connection === 'Connected' && sa.disk === 'UpToDate' && sa.resync === null && sa.outOfSyncBytes === 0 && sb.outOfSyncBytes === 0;
    });
    // a's changes are gone (its range holds b's data again, zeroes), b's are on both.
    expect((await a.read(MiB, MiB)).every((x) => x === 0)).toBe(true);
    expect((await a.read(4 * MiB, 3 * MiB)).every((x) => x === 0xbb)).toBe(true);
    await Promise.all([a.flush(), b.flush()]);
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
    const decision = nodeA.logs.find((l) => String(l.msg).includes('split brain resolved by policy'));
    expect(decision).toMatchObject({ policy: 'discard-least-changes', loser: 'a', ours: { node: 'a', dirtyBytes: MiB }, theirs: { node: 'b', dirtyBytes: 3 * MiB } });
    const facts = (decision as { ours: { generation: { current: string } }; theirs: { generation: { current: string } } });
    expect(facts.ours.generation.current).toMatch(/^[0-9a-f]{16}$/);
    expect(facts.theirs.generation.current).not.toBe(facts.ours.generation.current);
    a.close();
    b.close();
  });

  it('a fresh empty node joining a used volume gets a full copy', async () => {
    const dir = tempDir();
    const p = await pairPorts();
    const config = writePairConfig(join(dir, 'cluster.json'), p, '16M');
    // a starts alone and takes writes; b appears later with nothing.
    track(await startClusterNode(config, 'a'));
    const a = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    await a.write(3 * MiB, Buffer.alloc(MiB, 0x3c));
    await a.flush();
    track(await startClusterNode(config, 'b'));
    await until(async () => {
      const [sa, sb] = [await volumeStatus(p.adminA), await volumeStatus(p.adminB)];
      return sa.connection === 'Connected' && sb.disk === 'UpToDate' && sb.resync === null && sb.outOfSyncBytes === 0 && sb.resyncedBytesTotal > 0;
    });
    expect((await volumeStatus(p.adminB)).resyncedBytesTotal).toBe(16 * MiB);
    await a.flush();
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
    a.close();
  });
});
