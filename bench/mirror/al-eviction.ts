// What an activity-log eviction costs: the same 4k random writes on two mirrored pairs, one whose
// activity log covers the whole working set (no eviction after warm-up) and one whose log is far
// smaller (nearly every new extent evicts one: the data of both nodes is flushed first, issue 14).
// Median of 3 alternating rounds; prints IOPS, the ratio, and activity-log updates per write.
//   npx tsx bench/mirror/al-eviction.ts [--size 256M] [--runtime 5]
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pairPorts, until, volumeStatus, writePairConfig } from '../../test/support/cluster.js';
import { startClusterNode, type RunningServer } from '../../test/support/processes.js';
import { toolEnv } from '../../test/support/tools.js';

const { values: opts } = parseArgs({ options: { size: { type: 'string', default: '256M' }, runtime: { type: 'string', default: '5' } } });

function fio(uri: string, dir: string): { iops: number; writes: number } {
  const file = join(dir, 'fio.json');
  execFileSync('fio', ['--name=al', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--time_based', `--runtime=${opts.runtime}`, '--output-format=json', `--output=${file}`], { env: toolEnv(), stdio: 'ignore' });
  const job = JSON.parse(readFileSync(file, 'utf8')).jobs[0].write as { iops: number; total_ios: number };
  return { iops: job.iops, writes: job.total_ios };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-benchal-'));
  const procs: RunningServer[] = [];
  try {
    const pairs: Array<{ name: string; uri: string; admin: number }> = [];
    for (const [name, activityLog] of [
      ['log covers the volume (1000 x 4 MiB)', { extent: '4M', extents: 1000 }],
      ['log of 16 x 256 KiB (evicting)', { extent: '256K', extents: 16 }],
    ] as const) {
      const d = join(dir, `p${pairs.length}`);
      mkdirSync(d);
      const p = await pairPorts();
      const config = writePairConfig(join(d, 'cluster.json'), p, opts.size!, p.peerB, { activityLog });
      procs.push(await startClusterNode(config, 'a'), await startClusterNode(config, 'b'));
      await until(async () => (await volumeStatus(p.adminA)).connection === 'Connected' && (await volumeStatus(p.adminB)).disk === 'UpToDate', 30_000);
      const uri = `nbd://127.0.0.1:${p.nbdA}/vol0`;
      // Allocated first on both nodes, so neither pays ext4 block allocation the other does not.
      execFileSync('fio', ['--name=fill', '--ioengine=nbd', `--uri=${uri}`, '--rw=write', '--bs=1M', '--iodepth=8'], { env: toolEnv(), stdio: 'ignore' });
      pairs.push({ name, uri, admin: p.adminA });
    }
    console.log(`# 4k randwrite QD16 over ${opts.size}, mirrored pair, fio ${opts.runtime}s per run, median of 3 alternating rounds, ${new Date().toISOString()}`);
    const runs = pairs.map(() => [] as Array<{ iops: number; updatesPerWrite: number }>);
    for (let round = 0; round < 3; round++) {
      for (const [i, pair] of pairs.entries()) {
        const before = (await volumeStatus(pair.admin)).activityLogUpdates;
        const r = fio(pair.uri, dir);
        runs[i]!.push({ iops: r.iops, updatesPerWrite: ((await volumeStatus(pair.admin)).activityLogUpdates - before) / r.writes });
      }
    }
    const median = (xs: Array<{ iops: number; updatesPerWrite: number }>) => [...xs].sort((x, y) => x.iops - y.iops)[1]!;
    const base = median(runs[0]!).iops;
    for (const [i, pair] of pairs.entries()) {
      const m = median(runs[i]!);
      console.log(`${pair.name.padEnd(38)} ${m.iops.toFixed(0).padStart(6)} IOPS  ${(m.iops / base).toFixed(2)}x  log updates per write ${m.updatesPerWrite.toFixed(3)}`);
    }
  } finally {
    for (const p of procs) await p.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
