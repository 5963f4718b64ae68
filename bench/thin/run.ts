// Thin volumes vs raw-file volumes: fio 4k randwrite QD16 and 1M write QD8, first write (every
// unit allocated on the way, as on a new volume) and overwrite (the same region again),
// standalone and mirrored; then the allocation unit sizes 64K-4M side by side (how the default
// was chosen); metadata commits and journal blocks per second under load.
//   npm run bench:thin [-- --runtime 4] [--rounds 3] [--only standalone|mirrored|units] [--json]
// Every figure is the median of `rounds` rounds in which the targets take turns (a shared
// machine drifts by tens of percent between runs).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fetchStatus } from '../../src/admin/admin-client.js';
import { pairPorts, until, volumeStatus, writePairConfig } from '../../test/support/cluster.js';
import { startClusterNode, startNbdMirror, type RunningServer } from '../../test/support/processes.js';
import { toolEnv } from '../../test/support/tools.js';

const { values: opts } = parseArgs({ options: { runtime: { type: 'string', default: '4' }, rounds: { type: 'string', default: '3' }, only: { type: 'string' }, json: { type: 'boolean', default: false } } });
const out = (row: Record<string, unknown>, text: string) => console.log(opts.json ? JSON.stringify(row) : text);
/** Each case and round writes its own fresh 1 GiB region of a 16 GiB volume (first write), then that region again (overwrite). */
const REGION = 1024;
const ROUNDS = Number(opts.rounds);
const runs = (section: string) => opts.only === undefined || opts.only.split(',').includes(section);

interface Case {
  readonly name: string;
  readonly rw: string;
  readonly bs: string;
  readonly qd: number;
}
const CASES: Case[] = [
  { name: '4k randwrite QD16', rw: 'randwrite', bs: '4k', qd: 16 },
  { name: '1M write QD8', rw: 'write', bs: '1M', qd: 8 },
];

/** IOPS of fio over [offset, offset + 1 GiB): `first` writes it once through (not time-based: the region starts empty). */
function fio(uri: string, c: Case, offsetMiB: number, first: boolean, dir: string): number {
  const file = join(dir, 'fio.json');
  // Every run starts from clean page cache: otherwise one target writes back the other's dirty
  // pages (the thin pool's commits make its data durable every second, a raw file's stays dirty).
  execFileSync('sync');
  const span = first ? (c.rw === 'write' ? ['--io_size=1G'] : ['--io_size=256M']) : ['--time_based', `--runtime=${opts.runtime}`];
  execFileSync('fio', ['--name=t', '--ioengine=nbd', `--uri=${uri}`, `--rw=${c.rw}`, `--bs=${c.bs}`, `--iodepth=${c.qd}`, `--offset=${offsetMiB}M`, `--size=${REGION}M`, ...span, '--randrepeat=0', '--output-format=json', `--output=${file}`], { env: toolEnv(), stdio: 'ignore' });
  return JSON.parse(readFileSync(file, 'utf8')).jobs[0].write.iops as number;
}

/** First write and overwrite of each case on each target, in turns; the median of the rounds. */
function compare(targets: Record<string, string>, dir: string): Record<string, Record<string, number>> {
  const runs: Record<string, Record<string, number[]>> = {};
  for (let round = 0; round < ROUNDS; round++) {
    CASES.forEach((c, i) => {
      const region = (round * CASES.length + i) * REGION;
      for (const [name, uri] of Object.entries(targets)) {
        const r = (runs[name] ??= {});
        (r[`${c.name} first`] ??= []).push(fio(uri, c, region, true, dir));
        (r[`${c.name} overwrite`] ??= []).push(fio(uri, c, region, false, dir));
      }
    });
  }
  const median = (xs: number[]) => xs.sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  return Object.fromEntries(Object.entries(runs).map(([name, r]) => [name, Object.fromEntries(Object.entries(r).map(([k, xs]) => [k, median(xs)]))]));
}

function table(title: string, res: Record<string, Record<string, number>>, base: string, other: string, targets: Record<string, number>): void {
  if (!opts.json) console.log(`\n# ${title}`);
  for (const key of Object.keys(res[base]!)) {
    const [b, o] = [res[base]![key]!, res[other]![key]!];
    const target = targets[key.endsWith('first') ? 'first' : 'overwrite']!;
    out({ case: `${title}: ${key}`, [base]: b, [other]: o, ratio: o / b }, `${key.padEnd(30)} ${base} ${b.toFixed(0).padStart(7)} IOPS  ${other} ${o.toFixed(0).padStart(7)} IOPS  ${(o / b).toFixed(2)}x  target >= ${target}x ${o / b >= target ? 'pass' : 'MISS'}`);
  }
}

const targets = { first: 0.8, overwrite: 0.95 };

async function standalone(dir: string, procs: RunningServer[]): Promise<void> {
  const raw = await startNbdMirror(['--export', `raw=${join(dir, 'raw.img')}`, '--size', '16G']);
  const thin = await startNbdMirror(['--pool', join(dir, 'pool.img'), '--pool-size', '12G', '--thin', 'thin=16G']);
  procs.push(raw, thin);
  table('standalone', compare({ raw: raw.uri('raw'), thin: thin.uri('thin') }, dir), 'raw', 'thin', targets);
}

async function mirrored(dir: string, procs: RunningServer[]): Promise<void> {
  const pairs: Record<string, string> = {};
  const admins: Record<string, number> = {};
  for (const kind of ['raw', 'thin'] as const) {
    const p = await pairPorts();
    const dirs = { nodeA: { dataDir: `${kind}-a` }, nodeB: { dataDir: `${kind}-b` } };
    const config = writePairConfig(join(dir, `${kind}.json`), p, '16G', p.peerB, kind === 'thin' ? { pool: { size: '12G' }, ...dirs } : dirs);
    procs.push(await startClusterNode(config, 'a'), await startClusterNode(config, 'b'));
    await until(async () => (await volumeStatus(p.adminA)).connection === 'Connected' && (await volumeStatus(p.adminB)).disk === 'UpToDate', 30_000);
    pairs[kind] = `nbd://127.0.0.1:${p.nbdA}/vol0`;
    admins[kind] = p.adminA;
  }
  const before = (await fetchStatus({ host: '127.0.0.1', port: admins.thin! })).pool!.metadata;
  const t0 = Date.now();
  table('mirrored', compare(pairs, dir), 'raw', 'thin', targets);
  const after = (await fetchStatus({ host: '127.0.0.1', port: admins.thin! })).pool!.metadata;
  const secs = (Date.now() - t0) / 2000; // the thin pair ran about half of that time (they take turns)
  const blocks = after.journalBlocks - before.journalBlocks;
  out(
    { case: 'mirrored thin metadata', commits: after.commits - before.commits, journalBlocks: blocks, checkpoints: after.checkpoints - before.checkpoints, seconds: secs },
    `metadata on node a during the thin runs: ${after.commits - before.commits} commits, ${blocks} journal blocks, ${after.checkpoints - before.checkpoints} checkpoints in about ${secs.toFixed(0)} s (${(blocks / secs).toFixed(1)} journal blocks/s)`,
  );
}

/** The allocation unit sizes side by side (standalone), with the metadata each wrote. */
async function units(dir: string): Promise<void> {
  if (!opts.json) console.log('\n# allocation unit: standalone thin volume, IOPS (first write / overwrite), and metadata written');
  for (const unit of ['64K', '256K', '1M', '4M']) {
    const s = await startNbdMirror(['--pool', join(dir, `pool-${unit}.img`), '--pool-size', '12G', '--pool-unit', unit, '--thin', 'v=16G']);
    const res = compare({ [unit]: s.uri('v') }, dir)[unit]!;
    await s.stop();
    const closed = s.logs.find((l) => l.msg === 'pool closed') as { metadata: { journalBlocks: number; commits: number }; usedBytes: number } | undefined;
    out(
      { case: `unit ${unit}`, ...res, journalBlocks: closed?.metadata.journalBlocks, commits: closed?.metadata.commits, usedBytes: closed?.usedBytes },
      `unit ${unit.padEnd(5)} ${Object.entries(res).map(([k, v]) => `${k.replace(' QD16', '').replace(' QD8', '')} ${v.toFixed(0)}`).join(' | ')} | journal blocks ${closed?.metadata.journalBlocks}, used ${((closed?.usedBytes ?? 0) / 2 ** 20).toFixed(0)} MiB`,
    );
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-bencht-'));
  const procs: RunningServer[] = [];
  try {
    if (!opts.json) console.log(`# thin vs raw-file volumes, fio (overwrite ${opts.runtime}s time-based; first write: 256 MiB of 4k writes or 1 GiB of 1M writes into an empty 1 GiB region), median of ${ROUNDS} alternating rounds, load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} cores, ${new Date().toISOString()}`);
    if (runs('standalone')) await standalone(dir, procs);
    if (runs('mirrored')) await mirrored(dir, procs);
    for (const p of procs.splice(0)) await p.stop();
    if (runs('units')) await units(dir);
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
