// A node whose disk fails (the test-only fault layer, `serve --test-faults`): its client's write
// still succeeds because the peer holds it, the node's disk goes Failed, reads are served by
// the peer, writes go on to the peer with bits set there, and after the node restarts on a
// healthy disk it resyncs from the peer and both copies match.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dataFile, loadFaults, pairPorts, until, volumeStatus as status, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { startClusterNode, type RunningServer } from '../support/processes.js';

const KiB = 1024;
const MiB = 1024 * KiB;


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

  it('regression resync-source-disk-failed: the partial target does not become the only good copy; the resync goes on from the repaired source, identical', async () => {
    // Found by the power-cut soak (`--phase resync-source --disk-errors 0.5 --seed 4004`): the
    // target declared "the only good copy", took writes on partial data, and the pair diverged.
    const sub = join(dir, 'resync-source');
    const p = await pairPorts();
    mkdirSync(sub);
    const config = writePairConfig(join(sub, 'cluster.json'), p, '96M', p.peerB, { resync: { maxRate: '24M' } });
    const faults = join(sub, 'faults-a.json');
    writeFileSync(faults, JSON.stringify({ rules: [] }));
    let a = await startClusterNode(config, 'a', ['--test-faults', faults]);
    let b = await startClusterNode(config, 'b');
    running.push(a, b);
    await until(async () => (await status(p.adminB)).disk === 'UpToDate');
    await b.stop('SIGKILL');
    running.splice(running.indexOf(b), 1);
    await until(async () => (await status(p.adminA)).connection !== 'Connected');
    const ca = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    const CHANGED = 64 * MiB;
    const pattern = (off: number) => Buffer.alloc(4 * MiB, 1 + ((off / MiB) % 200));
    for (let off = 0; off < CHANGED; off += 4 * MiB) await ca.write(off, pattern(off));
    await ca.flush();
    b = await startClusterNode(config, 'b');
    running.push(b);
    // a is the resync source (about 2.7 s paced); its disk fails reads part way.
    await until(async () => ((await status(p.adminB)).resync?.doneBytes ?? 0) >= 8 * MiB, 30_000);
    await loadFaults(a, faults, { rules: [{ op: 'read', errno: 'EIO' }] });
    await until(async () => {
      const [sa, sb] = [await status(p.adminA), await status(p.adminB)];
      return sa.disk === 'Failed' && sa.connection === 'Connected' && sb.connection === 'Connected' && sb.peerDiskFailed;
    });
    const sb = await status(p.adminB);
    expect(sb).toMatchObject({ disk: 'Inconsistent', resync: null });
    expect(sb.outOfSyncBytes).toBeGreaterThan(0);
    expect(b.logs.some((l) => String(l.msg).includes('only good copy'))).toBe(false);

    // No complete copy is left: writes fail on both nodes, reads of ranges b lacks fail, the rest are served.
    const cb = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    const failed = (x: Promise<unknown>) => x.then(() => null, (e: { code?: string }) => e.code ?? String(e));
    expect(await failed(cb.write(60 * MiB, Buffer.alloc(4 * KiB, 0xee)))).toBe('EIO');
    expect(await failed(ca.write(61 * MiB, Buffer.alloc(4 * KiB, 0xef)))).toBe('EIO');
    expect(await failed(cb.read(60 * MiB, 4 * KiB))).toBe('EIO');
    expect(await failed(ca.read(60 * MiB, 4 * KiB))).toBe('EIO');
    expect((await cb.read(80 * MiB, 4 * KiB)).equals(Buffer.alloc(4 * KiB))).toBe(true); // never changed: b holds it
    // One link loss (the source's reset when its disk failed), no loop of reconnects.
    expect(b.logs.filter((l) => l.msg === 'peer link lost').length).toBe(1);
    await ca.close();
    await cb.close();

    // a's disk repaired (faults cleared), a restarted: the resync goes on from it and ends identical.
    await a.stop('SIGKILL');
    running.splice(running.indexOf(a), 1);
    writeFileSync(faults, JSON.stringify({ rules: [] }));
    a = await startClusterNode(config, 'a', ['--test-faults', faults]);
    running.push(a);
    await until(async () => {
      const [x, y] = [await status(p.adminA), await status(p.adminB)];
      return x.connection === 'Connected' && x.disk === 'UpToDate' && y.disk === 'UpToDate' && y.resync === null && x.outOfSyncBytes === 0 && y.outOfSyncBytes === 0;
    }, 30_000);
    const [fa, fb] = [readFileSync(join(sub, 'a', 'vol0.img')), readFileSync(join(sub, 'b', 'vol0.img'))];
    expect(fa.equals(fb)).toBe(true);
    for (let off = 0; off < CHANGED; off += 4 * MiB) expect(fb.subarray(off, off + 4 * MiB).equals(pattern(off))).toBe(true);
  }, 120_000);
});
