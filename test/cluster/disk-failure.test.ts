// A node whose disk fails (the test-only fault layer, `serve --test-faults`): its client's write
// still succeeds because the peer holds it, the node's disk goes Failed, reads are served by
// the peer, writes go on to the peer with bits set there, and after the node restarts on a
// healthy disk it resyncs from the peer and both copies match.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dataFile, pairPorts, until, volumeStatus as status, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { startClusterNode, type RunningServer } from '../support/processes.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Writes the fault spec and sends SIGUSR2; resolves once the node has logged loading it. */
async function loadFaults(node: RunningServer, file: string, spec: unknown): Promise<void> {
  const loaded = () => node.logs.filter((l) => l.component === 'faults' && l.msg === 'fault rules loaded').length;
  const before = loaded();
  writeFileSync(file, JSON.stringify(spec));
  node.proc.kill('SIGUSR2');
  await until(() => loaded() > before, 10_000);
}

describe('a node whose disk fails', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-diskfail-'));
  const running: RunningServer[] = [];
  afterAll(async () => {
    for (const r of running) await r.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps serving through its peer, and resyncs from it after a restart on a healthy disk', async () => {
    const p = await pairPorts();
    const config = writePairConfig(join(dir, 'cluster.json'), p, '16M');
    const faults = join(dir, 'faults-a.json');
    const a = await startClusterNode(config, 'a', ['--test-faults', faults]);
    const b = await startClusterNode(config, 'b');
    running.push(a, b);
    await until(async () => (await status(p.adminA)).connection === 'Connected' && (await status(p.adminB)).disk === 'UpToDate');
    const ca = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    const cb = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    await ca.write(0, Buffer.alloc(MiB, 0x11));

    // a's disk fails writes in its first 64 KiB with ENOSPC (a full filesystem, say).
    await loadFaults(a, faults, { rules: [{ op: 'write', errno: 'ENOSPC', offset: 0, length: '64k' }] });
    const failedWrite = Buffer.alloc(64 * KiB, 0x22);
    await ca.write(0, failedWrite); // succeeds: b holds it
    const [sa, sb] = [await status(p.adminA), await status(p.adminB)];
    expect(sa).toMatchObject({ disk: 'Failed', connection: 'Connected' });
    expect(sb).toMatchObject({ disk: 'UpToDate', peerDiskFailed: true, connection: 'Connected' });
    expect(a.logs.find((l) => String(l.msg).startsWith('disk Failed'))).toMatchObject({ code: 'ENOSPC', offset: 0, length: 64 * KiB });

    // Reads on a come from b: the write a's disk refused, and data a's disk still holds.
    expect((await ca.read(0, 64 * KiB)).equals(failedWrite)).toBe(true);
    expect((await ca.read(64 * KiB, 64 * KiB)).equals(Buffer.alloc(64 * KiB, 0x11))).toBe(true);
    // Writes go on through both nodes; a's disk stores nothing more, b marks what a lacks.
    await ca.write(2 * MiB, Buffer.alloc(64 * KiB, 0x33));
    await cb.write(3 * MiB, Buffer.alloc(64 * KiB, 0x44));
    await ca.flush();
    expect((await cb.read(2 * MiB, 64 * KiB)).equals(Buffer.alloc(64 * KiB, 0x33))).toBe(true);
    expect((await ca.read(3 * MiB, 64 * KiB)).equals(Buffer.alloc(64 * KiB, 0x44))).toBe(true);
    expect(readFileSync(dataFile(dir, 'a')).subarray(2 * MiB, 2 * MiB + 64 * KiB).equals(Buffer.alloc(64 * KiB))).toBe(true);
    expect((await status(p.adminB)).outOfSyncBytes).toBeGreaterThanOrEqual(3 * 64 * KiB);
    await ca.close();
    await cb.close();

    // The disk is replaced (no faults) and the node restarted: it resyncs from b.
    await a.stop('SIGKILL');
    running.splice(running.indexOf(a), 1);
    writeFileSync(faults, JSON.stringify({ rules: [] }));
    running.push(await startClusterNode(config, 'a', ['--test-faults', faults]));
    await until(async () => {
      const [x, y] = [await status(p.adminA), await status(p.adminB)];
      return x.connection === 'Connected' && x.disk === 'UpToDate' && x.resync === null && x.outOfSyncBytes === 0 && y.outOfSyncBytes === 0 && !y.peerDiskFailed;
    });
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
    expect(readFileSync(dataFile(dir, 'b')).subarray(0, 64 * KiB).equals(failedWrite)).toBe(true);
  });
});
