// fio writes verifiable data to node a while node b is killed (kill -9) in the middle of the run;
// b restarts and resyncs by itself; then fio verifies every block through b, and the two
// replicas compare identical with qemu-img.
import { statSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dataFile, pairPorts, until, volumeStatus, writePairConfig } from '../support/cluster.js';
import { run } from '../support/fixture.js';
import { startClusterNode, type RunningServer } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

describe.skipIf(missingTools('fio', 'qemu-img').length > 0)('two-node cluster: fio through a node failure', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-cluster-'));
  const running: RunningServer[] = [];
  afterAll(async () => {
    for (const r of running) await r.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('kill -9 of b during fio writes on a, restart, automatic resync, fio --verify through b passes', async () => {
    const p = await pairPorts();
    const config = writePairConfig(join(dir, 'cluster.json'), p, '128M');
    running.push(await startClusterNode(config, 'a'));
    let b = await startClusterNode(config, 'b');
    running.push(b);
    await until(async () => (await volumeStatus(p.adminA)).connection === 'Connected' && (await volumeStatus(p.adminB)).disk === 'UpToDate');

    // The same job writes and, later, verifies: fixed size, fixed random sequence.
    const job = (uri: string, verifyOnly: boolean) => [
      '--name=failover',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--size=96M',
      '--verify=crc32c',
      '--verify_fatal=1',
      '--verify_state_save=0',
      `--directory=${dir}`,
      ...(verifyOnly ? ['--verify_only'] : ['--do_verify=0']),
    ];
    const writing = run('fio', job(`nbd://127.0.0.1:${p.nbdA}/vol0`, false));
    // Kill b once a good part of the data is written (allocated blocks of a's file show progress).
    await until(async () => statSync(dataFile(dir, 'a')).blocks * 512 > 24 * 2 ** 20, 30_000);
    await b.stop('SIGKILL');
    await writing;
    const dirty = (await volumeStatus(p.adminA)).outOfSyncBytes;
    expect(dirty).toBeGreaterThan(0);

    b = await startClusterNode(config, 'b');
    running.push(b);
    await until(async () => {
      const [sa, sb] = [await volumeStatus(p.adminA), await volumeStatus(p.adminB)];
      return sa.connection === 'Connected' && sb.disk === 'UpToDate' && sb.resync === null && sa.outOfSyncBytes === 0;
    }, 60_000);
    const resynced = (await volumeStatus(p.adminB)).resyncedBytesTotal;
    expect(resynced).toBe(dirty); // what changed while b was away, not the volume
    expect(resynced).toBeLessThan(128 * 2 ** 20);

    const verify = await run('fio', [...job(`nbd://127.0.0.1:${p.nbdB}/vol0`, true), '--output-format=json']);
    expect(JSON.parse(verify.slice(verify.indexOf('{'))).jobs[0].error).toBe(0);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', `nbd://127.0.0.1:${p.nbdA}/vol0`, `nbd://127.0.0.1:${p.nbdB}/vol0`]);
  });
});
