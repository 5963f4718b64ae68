// Server benchmark: fio (ioengine=nbd) against nbd-mirror and against `nbdkit file` on the same
// file in the same run, then a memory test (16 clients × QD32 × 1 MiB writes, peak RSS). With
// --tls, both servers also serve over TLS (X.509, --tls require) and each TLS row gives its
// ratio to the same server in plain.
//   npm run bench:server [-- --runtime 5] [--rounds 3] [--io auto|mmap] [--size 2G] [--json] [--only nbd-mirror|nbdkit] [--no-memory] [--tls]
// Each profile runs `rounds` times per server, alternating servers; the median round counts.
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSize } from '../../src/config/units.js';
import { startNbdkit, startNbdMirror, type RunningServer } from '../../test/support/processes.js';
import { toolEnv } from '../../test/support/tools.js';
import { makeTlsKeys, withLibnbdCerts, type TlsKeys } from '../../test/support/tls.js';

const { values: opts } = parseArgs({
  options: {
    runtime: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '3' },
    size: { type: 'string', default: '2G' },
    json: { type: 'boolean', default: false },
    only: { type: 'string' },
    'no-memory': { type: 'boolean', default: false },
    io: { type: 'string', default: 'auto' },
    tls: { type: 'boolean', default: false },
  },
});

const TARGET = 0.8;
const RSS_TARGET_MIB = 200;

interface Profile {
  name: string;
  rw: string;
  bs: string;
  iodepth: number;
  numjobs?: number;
  rwmixread?: number;
}

const profiles: Profile[] = [
  { name: '4k randread QD16', rw: 'randread', bs: '4k', iodepth: 16 },
  { name: '4k randwrite QD16', rw: 'randwrite', bs: '4k', iodepth: 16 },
  { name: '1M read QD8', rw: 'read', bs: '1M', iodepth: 8 },
  { name: '1M write QD8', rw: 'write', bs: '1M', iodepth: 8 },
  { name: '4k randrw 70/30 QD32 x4', rw: 'randrw', bs: '4k', iodepth: 32, numjobs: 4, rwmixread: 70 },
];

interface Result {
  iops: number;
  mbps: number;
  p99us: number;
}

/** A server under test, and how fio reaches it (over TLS: with the client certificates). */
interface Target {
  readonly name: string;
  readonly server: RunningServer;
  /** The same server in plain, for a TLS row's ratio. */
  readonly plain?: string;
  readonly tls?: TlsKeys;
}

function fio(t: Target, p: Profile, runtime: number, size: number): Result {
  const uri = t.tls ? t.server.uri('disk').replace(/^nbd:/, 'nbds:') : t.server.uri('disk');
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${p.rw}`,
    `--bs=${p.bs}`,
    `--iodepth=${p.iodepth}`,
    `--numjobs=${p.numjobs ?? 1}`,
    `--rwmixread=${p.rwmixread ?? 50}`,
    '--group_reporting',
    `--size=${size}`,
    '--time_based',
    `--runtime=${runtime}`,
    '--output-format=json',
  ];
  const c = t.tls ? withLibnbdCerts(t.tls, t.tls.clientCerts, 'fio', args) : { cmd: 'fio', args };
  const out = execFileSync(c.cmd, c.args, { env: toolEnv(), encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0]; // fio's nbd engine says "connected" first
  const p99 = (side: { clat_ns: { percentile?: Record<string, number> }; iops: number }) =>
    side.iops > 0 ? (side.clat_ns.percentile?.['99.000000'] ?? 0) / 1000 : 0;
  return {
    iops: job.read.iops + job.write.iops,
    mbps: (job.read.bw_bytes + job.write.bw_bytes) / 1e6,
    p99us: Math.max(p99(job.read), p99(job.write)),
  };
}

function version(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { env: toolEnv(), encoding: 'utf8' }).split('\n')[0]!.trim();
  } catch {
    return 'not found';
  }
}

async function memoryTest(file: string, dir: string): Promise<number> {
  const server = await startNbdMirror(['--export', `disk=${file}`]);
  let peak = 0;
  const sample = () => {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.proc.pid}/status`, 'utf8'));
    peak = Math.max(peak, Number(m?.[1] ?? 0) / 1024);
  };
  const timer = setInterval(sample, 100);
  try {
    const { execFile } = await import('node:child_process');
    await new Promise<void>((resolve, reject) =>
      execFile(
        'fio',
        ['--name=mem', '--ioengine=nbd', `--uri=${server.uri('disk')}`, '--rw=randwrite', '--bs=1M', '--iodepth=32', '--numjobs=16', '--size=1G', '--time_based', '--runtime=10', '--group_reporting', `--output=${join(dir, 'mem.json')}`, '--output-format=json'],
        { env: toolEnv() },
        (err) => (err ? reject(err) : resolve()),
      ),
    );
    sample();
  } finally {
    clearInterval(timer);
    await server.stop();
  }
  return peak;
}

async function main(): Promise<void> {
  const runtime = Number(opts.runtime);
  const size = parseSize(opts.size!);
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-bench-'));
  const file = join(dir, 'disk.img');
  const log = (s: string) => (opts.json ? undefined : console.log(s));
  try {
    // Pre-fill so reads hit real data rather than holes.
    const fd = openSync(file, 'w');
    const chunk = Buffer.alloc(8 << 20, 0x5a);
    for (let off = 0; off < size; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
    closeSync(fd);

    log(`# nbd-mirror vs nbdkit — ${new Date().toISOString()}`);
    log(`# ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), node ${process.version}, ${version('nbdkit', ['--version'])}, ${version('fio', ['--version'])}`);
    log(`# file ${opts.size} pre-filled; ${opts.rounds} alternating rounds of ${runtime}s per server and profile, median shown; nbdkit file plugin with its default 16 threads; nbd-mirror --io ${opts.io} (UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? 4})`);

    const servers: Target[] = [];
    const tls = opts.tls ? makeTlsKeys() : undefined;
    if (opts.only !== 'nbdkit') {
      servers.push({ name: 'nbd-mirror', server: await startNbdMirror(['--export', `disk=${file}`, '--io', opts.io!]) });
      if (tls) {
        const server = await startNbdMirror(['--export', `disk=${file}`, '--io', opts.io!, '--tls', 'require', '--tls-certificates', tls.serverCerts]);
        servers.push({ name: 'nbd-mirror TLS', server, plain: 'nbd-mirror', tls });
      }
    }
    if (opts.only !== 'nbd-mirror') {
      servers.push({ name: 'nbdkit', server: await startNbdkit(file) });
      if (tls) servers.push({ name: 'nbdkit TLS', server: await startNbdkit(file, ['--tls=require', `--tls-certificates=${tls.serverCerts}`]), plain: 'nbdkit', tls });
    }
    if (tls) log(`# TLS: --tls require with X.509 (ECDSA P-256 keys from certtool), fio through nbds://; "ratio" of a TLS row is to the same server in plain`);
    const rows: string[][] = [['profile', 'server', 'IOPS', 'MB/s', 'p99 µs', 'ratio', 'target', '']];
    try {
      for (const [i, p] of profiles.entries()) {
        const rounds = new Map<string, Result[]>(servers.map((t) => [t.name, []]));
        // Servers alternate round by round (and who starts alternates by profile), each run after
        // a short warm-up; the median round is reported, since a shared machine is noisy.
        for (let round = 0; round < Number(opts.rounds); round++) {
          const order = (i + round) % 2 === 0 ? servers : [...servers].reverse();
          for (const t of order) {
            fio(t, p, 1, size);
            rounds.get(t.name)!.push(fio(t, p, runtime, size));
          }
        }
        const results = new Map<string, Result>();
        for (const [name, rs] of rounds) results.set(name, [...rs].sort((x, y) => x.iops - y.iops)[rs.length >> 1]!);
        const ours = results.get('nbd-mirror');
        const theirs = results.get('nbdkit');
        const ratio = ours && theirs ? ours.iops / theirs.iops : undefined;
        for (const t of servers) {
          const r = results.get(t.name)!;
          const mine = t.name === 'nbd-mirror';
          const ofPlain = t.plain ? r.iops / results.get(t.plain)!.iops : undefined;
          if (opts.json) console.log(JSON.stringify({ profile: p.name, server: t.name, ...r, ...(mine && ratio ? { ratio } : {}), ...(ofPlain ? { ofPlain } : {}) }));
          rows.push([
            p.name,
            t.name,
            r.iops.toFixed(0),
            r.mbps.toFixed(0),
            r.p99us.toFixed(0),
            mine && ratio ? `${ratio.toFixed(2)}x` : ofPlain ? `${ofPlain.toFixed(2)}x` : '',
            mine && ratio ? `>= ${TARGET}x` : ofPlain ? 'of plain' : '',
            mine && ratio ? (ratio >= TARGET ? 'pass' : 'MISS') : '',
          ]);
        }
      }
    } finally {
      for (const t of servers) await t.server.stop();
      tls?.cleanup();
    }
    const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
    for (const r of rows) log(r.map((cell, c) => (c >= 2 && c <= 5 ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join('  '));

    if (!opts['no-memory'] && opts.only !== 'nbdkit') {
      const peak = await memoryTest(file, dir);
      if (opts.json) console.log(JSON.stringify({ profile: 'memory 16 clients x QD32 x 1M writes', server: 'nbd-mirror', peakRssMiB: peak }));
      log(`\nmemory: 16 clients × QD32 × 1 MiB random writes for 10 s: peak RSS ${peak.toFixed(0)} MiB (target < ${RSS_TARGET_MIB} MiB): ${peak < RSS_TARGET_MIB ? 'pass' : 'MISS'}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
