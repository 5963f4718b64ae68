// A resync interrupted by another failure resumes where it stopped: b is killed (-9) in the
// middle of catching up 256 MiB (a bitmap resync, then a new node's full sync); restarted, it
// copies only what the last checkpoint (every 64 MiB the copied data is made durable and its
// bits cleared on both nodes) had not covered.
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dataFile, pairPorts, until, volumeStatus, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { run } from '../support/fixture.js';
import { cliPath, startClusterNode, type RunningServer } from '../support/processes.js';

const MiB = 2 ** 20;
const CHANGED = 256 * MiB;

describe('resync interrupted by a crash', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-resume-'));
  const procs: RunningServer[] = [];
  afterAll(async () => {
    for (const r of procs) await r.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('kill -9 of the resync target: after restart it copies only what was not checkpointed', async () => {
    const p = await pairPorts();
    // Paced so the test can stop it half way (about 5 s for the whole copy: room for a loaded machine's slow polls).
    const config = writePairConfig(join(dir, 'cluster.json'), p, '320M', p.peerB, { resync: { maxRate: '48M' } });
    const a = await startClusterNode(config, 'a');
    let b = await startClusterNode(config, 'b');
    procs.push(a, b);
    await until(async () => (await volumeStatus(p.adminB)).disk === 'UpToDate');
    await b.stop('SIGKILL');
    await until(async () => (await volumeStatus(p.adminA)).connection !== 'Connected');
    const client = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    for (let off = 0; off < CHANGED; off += 4 * MiB) await client.write(off, Buffer.alloc(4 * MiB, 1 + ((off / MiB) % 200)));
    await client.flush();
    expect((await volumeStatus(p.adminA)).outOfSyncBytes).toBe(CHANGED);

    b = await startClusterNode(config, 'b');
    procs.push(b);
    // `nbd-mirror status` shows the progress in words while it runs.
    await until(async () => ((await volumeStatus(p.adminB)).resync?.doneBytes ?? 0) >= 80 * MiB, 30_000);
    expect(await run(process.execPath, [cliPath, 'status', '--admin', `127.0.0.1:${p.adminB}`])).toMatch(/vol0: Connected Inconsistent .* resync target [\d.]+ MiB\/256 MiB at [\d.]+ MiB\/s, \d+ s left/);
    // Past two checkpoints (64 and 128 MiB), then b dies.
    await until(async () => ((await volumeStatus(p.adminB)).resync?.doneBytes ?? 0) >= 160 * MiB, 30_000);
    await b.stop('SIGKILL');
    await until(async () => (await volumeStatus(p.adminA)).connection !== 'Connected');
    const left = (await volumeStatus(p.adminA)).outOfSyncBytes;
    expect(left).toBeLessThanOrEqual(CHANGED - 64 * MiB);
    expect(left).toBeGreaterThan(0);

    b = await startClusterNode(config, 'b');
    procs.push(b);
    await until(async () => {
      const [sa, sb] = [await volumeStatus(p.adminA), await volumeStatus(p.adminB)];
      return sa.connection === 'Connected' && sb.disk === 'UpToDate' && sb.resync === null && sa.outOfSyncBytes === 0 && sb.outOfSyncBytes === 0;
    }, 30_000);
    const second = (await volumeStatus(p.adminB)).lastResync!;
    // What was left on a, plus at most b's own activity-log extents (b crashed while connected; no client wrote through b, so none).
    expect(second.bytes).toBe(left);
    console.log(`resync of ${CHANGED / MiB} MiB cut by kill -9 of the target; after restart it copied ${second.bytes / MiB} MiB`);
    client.close();
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
  });

  it('kill -9 of a new node during its full sync: after restart it copies only what was not checkpointed', async () => {
    const sub = join(dir, 'full');
    mkdirSync(sub);
    const p = await pairPorts();
    const config = writePairConfig(join(sub, 'cluster.json'), p, '256M', p.peerB, { resync: { maxRate: '48M' } });
    // a serves alone and is written; b appears later with nothing (the migration case).
    const a = await startClusterNode(config, 'a');
    procs.push(a);
    const client = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    for (let off = 0; off < 256 * MiB; off += 4 * MiB) await client.write(off, Buffer.alloc(4 * MiB, 7 + ((off / MiB) % 100)));
    await client.flush();
    let b = await startClusterNode(config, 'b');
    procs.push(b);
    await until(async () => ((await volumeStatus(p.adminB)).resync?.doneBytes ?? 0) >= 160 * MiB, 30_000);
    expect((await volumeStatus(p.adminB)).resync!.totalBytes).toBe(256 * MiB);
    await b.stop('SIGKILL');
    await until(async () => (await volumeStatus(p.adminA)).connection !== 'Connected');
    b = await startClusterNode(config, 'b');
    procs.push(b);
    await until(async () => {
      const [sa, sb] = [await volumeStatus(p.adminA), await volumeStatus(p.adminB)];
      return sa.connection === 'Connected' && sb.disk === 'UpToDate' && sb.resync === null && sb.outOfSyncBytes === 0;
    }, 30_000);
    const second = (await volumeStatus(p.adminB)).lastResync!;
    expect(second.bytes).toBeLessThanOrEqual(256 * MiB - 64 * MiB);
    console.log(`full sync of 256 MiB cut by kill -9 of the new node; after restart it copied ${second.bytes / MiB} MiB`);
    client.close();
    expect(readFileSync(join(sub, 'a', 'vol0.img')).equals(readFileSync(join(sub, 'b', 'vol0.img')))).toBe(true);
  });
});
