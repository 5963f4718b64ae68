// CPU time per request at a fixed request rate: a figure the shared 2-core machine's noise barely
// moves (throughput runs vary 2x minute to minute here). fio (ioengine=nbd) sends `--rate` requests
// a second for `--seconds`; the server's user+system time over that run, divided by the requests
// fio completed, is the cost of one request. nbdkit on the same file for comparison, and any
// other nbd-mirror build (`--cli path/to/build/cli.js`) for an A/B of a change.
//   npx tsx bench/server/cpu-per-request.ts [--rate 4000] [--seconds 10] [--rw randread] [--bs 4k] [--iodepth 16] [--cli OTHER] [--rounds 3]
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startNbdkit, startNbdMirror, type RunningServer } from '../../test/support/processes.js';
import { toolEnv } from '../../test/support/tools.js';

const { values: o } = parseArgs({
  options: {
    rate: { type: 'string', default: '4000' },
    seconds: { type: 'string', default: '10' },
    rw: { type: 'string', default: 'randread' },
    bs: { type: 'string', default: '4k' },
    iodepth: { type: 'string', default: '16' },
    rounds: { type: 'string', default: '3' },
    cli: { type: 'string' },
  },
});

/** Linux's USER_HZ: /proc/PID/stat counts CPU time in 1/100 s. */
const TICKS_PER_S = 100;

function cpuSeconds(pid: number): number {
  // Fields after the command (which may contain spaces) start after the last ')'.
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / TICKS_PER_S; // utime, stime
}

function run(server: RunningServer, dir: string): { requests: number; cpuUs: number } {
  const out = join(dir, 'fio.json');
  const before = cpuSeconds(server.proc.pid!);
  execFileSync(
    'fio',
    ['--name=cpu', '--ioengine=nbd', `--uri=${server.uri('disk')}`, `--rw=${o.rw}`, `--bs=${o.bs}`, `--iodepth=${o.iodepth}`, `--rate_iops=${o.rate}`, '--size=1G', '--time_based', `--runtime=${o.seconds}`, `--output=${out}`, '--output-format=json'],
    { env: toolEnv() },
  );
  const cpu = cpuSeconds(server.proc.pid!) - before;
  const job = (JSON.parse(readFileSync(out, 'utf8')) as { jobs: Array<{ read: { total_ios: number }; write: { total_ios: number } }> }).jobs[0]!;
  const requests = job.read.total_ios + job.write.total_ios;
  return { requests, cpuUs: (cpu * 1e6) / requests };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-cpu-'));
  const file = join(dir, 'disk.img');
  try {
    const fd = openSync(file, 'w');
    const chunk = Buffer.alloc(8 << 20, 0x5a);
    for (let off = 0; off < 1 << 30; off += chunk.length) writeSync(fd, chunk, 0, chunk.length, off);
    closeSync(fd);
    const servers: Array<[string, () => Promise<RunningServer>]> = [
      ['nbd-mirror', () => startNbdMirror(['--export', `disk=${file}`, '--log-level', 'info'])],
      ...(o.cli ? [[`nbd-mirror (${o.cli})`, () => startNbdMirror(['--export', `disk=${file}`], { cli: o.cli })] as [string, () => Promise<RunningServer>]] : []),
      ['nbdkit', () => startNbdkit(file)],
    ];
    console.log(`# CPU per request: fio ${o.rw} bs=${o.bs} QD${o.iodepth} at ${o.rate} requests/s for ${o.seconds} s, ${o.rounds} rounds alternating, median`);
    const results = new Map<string, number[]>();
    for (let r = 0; r < Number(o.rounds); r++) {
      for (const [name, start] of servers) {
        const s = await start();
        try {
          const { cpuUs } = run(s, dir);
          results.set(name, [...(results.get(name) ?? []), cpuUs]);
        } finally {
          await s.stop();
        }
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    console.log('server'.padEnd(48), 'CPU µs/request', '  rounds');
    for (const [name, xs] of results) console.log(name.padEnd(48), median(xs).toFixed(1).padStart(14), `  ${xs.map((x) => x.toFixed(1)).join(' ')}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
