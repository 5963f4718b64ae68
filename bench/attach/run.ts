// Attach benchmark: fio through `nbd-mirror attach` vs straight to the active node (IOPS, p99
// completion latency, attach's CPU per request) and, for scale, vs a plain byte-forwarding TCP
// proxy (what any extra hop on the same box costs), then the pause a client sees at fail-over
// (kill -9 and SIGSTOP of the active node) and at fail-back.
//   npm run bench:attach [-- --size 2G] [--runtime 5] [--json]
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { attachStatus, startPair, until } from '../../test/support/cluster.js';
import { NbdClient } from '../../test/support/nbd-client.js';
import { startAttachProcess, startClusterNode, type RunningServer } from '../../test/support/processes.js';
import { TcpProxy } from '../../test/support/tcp-proxy.js';
import { toolEnv } from '../../test/support/tools.js';

const { values: opts } = parseArgs({
  options: { size: { type: 'string', default: '2G' }, runtime: { type: 'string', default: '5' }, json: { type: 'boolean', default: false } },
});
const out = (row: Record<string, unknown>, text: string) => console.log(opts.json ? JSON.stringify(row) : text);

interface FioResult {
  iops: number;
  p99us: number;
  ios: number;
}

/** One fio run; asynchronous, so the TCP proxy (in this process) keeps forwarding. */
async function fio(uri: string, rw: string, bs: string, iodepth: number, dir: string): Promise<FioResult> {
  const file = join(dir, 'fio.json');
  await new Promise<void>((resolve, reject) =>
    execFile('fio', ['--name=a', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, `--bs=${bs}`, `--iodepth=${iodepth}`, '--size=1G', '--time_based', `--runtime=${opts.runtime}`, '--output-format=json', `--output=${file}`], { env: toolEnv() }, (err) => (err ? reject(err) : resolve())),
  );
  const w = JSON.parse(readFileSync(file, 'utf8')).jobs[0].write;
  return { iops: w.iops as number, p99us: (w.clat_ns.percentile['99.000000'] as number) / 1000, ios: w.total_ios as number };
}

/** CPU seconds (user + system) a process has used so far, from /proc. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-bencha-'));
  const procs: RunningServer[] = [];
  try {
    const pair = await startPair(dir, opts.size!, procs);
    const { p, config } = pair;
    let a = pair.a;
    const attach = await startAttachProcess(config);
    procs.push(attach);
    const st = () => attachStatus(attach.adminPort);
    await until(async () => (await st()).active === 'a', 30_000);
    const direct = `nbd://127.0.0.1:${p.nbdA}/vol0`;
    const through = `nbd://127.0.0.1:${attach.port}/vol0`;
    const proxy = new TcpProxy({ host: '127.0.0.1', port: p.nbdA });
    const proxied = `nbd://127.0.0.1:${await proxy.start()}/vol0`;
    const load = execFileSync('cat', ['/proc/loadavg']).toString().trim();
    if (!opts.json) console.log(`# attach vs straight to the active node, ${opts.size} volume, fio ${opts.runtime}s per run, median of 3 alternating rounds after preconditioning, load ${load}, ${new Date().toISOString()}`);
    execFileSync('fio', ['--name=fill', '--ioengine=nbd', `--uri=${direct}`, '--rw=write', '--bs=1M', '--iodepth=8', '--size=1G'], { env: toolEnv(), stdio: 'ignore' });
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
    for (const [name, rw, bs, qd] of [
      ['4k randwrite QD16', 'randwrite', '4k', 16],
      ['1M write QD8', 'write', '1M', 8],
    ] as const) {
      const runs = { direct: [] as FioResult[], attach: [] as FioResult[], proxy: [] as FioResult[], cpuUs: [] as number[] };
      for (let round = 0; round < 3; round++) {
        runs.direct.push(await fio(direct, rw, bs, qd, dir));
        runs.proxy.push(await fio(proxied, rw, bs, qd, dir));
        const cpu0 = cpuSeconds(attach.proc.pid!);
        const r = await fio(through, rw, bs, qd, dir);
        runs.attach.push(r);
        runs.cpuUs.push(((cpuSeconds(attach.proc.pid!) - cpu0) * 1e6) / r.ios);
      }
      const d = { iops: median(runs.direct.map((x) => x.iops)), p99: median(runs.direct.map((x) => x.p99us)) };
      const t = { iops: median(runs.attach.map((x) => x.iops)), p99: median(runs.attach.map((x) => x.p99us)) };
      const iopsRatio = t.iops / d.iops;
      const p99Ratio = t.p99 / d.p99;
      const x = { iops: median(runs.proxy.map((r) => r.iops)), p99: median(runs.proxy.map((r) => r.p99us)) };
      const cpu = median(runs.cpuUs);
      out(
        { case: name, directIops: d.iops, attachIops: t.iops, proxyIops: x.iops, iopsRatio, directP99us: d.p99, attachP99us: t.p99, proxyP99us: x.p99, p99Ratio, attachCpuUsPerRequest: cpu },
        `${name.padEnd(18)} direct ${d.iops.toFixed(0).padStart(6)} IOPS p99 ${d.p99.toFixed(0).padStart(6)} us | attach ${t.iops.toFixed(0).padStart(6)} IOPS p99 ${t.p99.toFixed(0).padStart(6)} us | ${iopsRatio.toFixed(2)}x IOPS (target >= 0.8 ${iopsRatio >= 0.8 ? 'pass' : 'MISS'}), ${p99Ratio.toFixed(2)}x p99 (target <= 1.3 ${p99Ratio <= 1.3 ? 'pass' : 'MISS'}), attach CPU ${cpu.toFixed(1)} us/request | TCP proxy ${x.iops.toFixed(0).padStart(6)} IOPS (${(x.iops / d.iops).toFixed(2)}x) p99 ${x.p99.toFixed(0)} us (${(x.p99 / d.p99).toFixed(2)}x)`,
      );
    }

    // --- pauses: one client writing 4k at QD1 through attach; the longest wait for a reply per event.
    if (!opts.json) console.log('\n# pause a client sees (4k writes at QD1 through attach): longest write during the event, the write in flight at the switch; attach\'s own record');
    const client = await NbdClient.connect({ port: attach.port, exportName: 'vol0' });
    let worst = 0;
    let stop = false;
    let writes = 0;
    // The last writes' start and end (wall clock, as attach's record of the switch is).
    const recent: Array<[number, number]> = [];
    const writer = (async () => {
      const buf = Buffer.alloc(4096, 7);
      for (let i = 0; !stop; i++) {
        const t0 = Date.now();
        await client.write((i % 4096) * 4096, buf);
        const t1 = Date.now();
        worst = Math.max(worst, t1 - t0);
        recent.push([t0, t1]);
        if (recent.length > 50_000) recent.splice(0, 10_000);
        writes++;
      }
    })();
    // The longest wait of all writes during the event (a node rejoining slows its peer too), and of the write in flight at attach's switch.
    const measure = async (event: string, act: () => Promise<void>, done: () => Promise<boolean>) => {
      await until(async () => writes > 100);
      worst = 0;
      await act();
      await until(done, 90_000);
      const seenBefore = writes;
      await until(async () => writes > seenBefore + 100, 30_000);
      const s = (await st()).lastStall!;
      const at = Date.parse(s.at);
      const atSwitch = Math.max(0, ...recent.filter(([t0, t1]) => t0 <= at && at <= t1).map(([t0, t1]) => t1 - t0));
      out(
        { event, clientMaxWaitMs: worst, clientWaitAtSwitchMs: atSwitch, attachPauseMs: s.pauseMs, resent: s.resent },
        `${event.padEnd(34)} client: longest write ${worst.toFixed(0).padStart(5)} ms, at the switch ${atSwitch.toFixed(0).padStart(5)} ms; attach: ${s.kind} ${s.from} -> ${s.to}, paused ${s.pauseMs} ms, ${s.resent} re-sent`,
      );
    };
    await measure('kill -9 of the active node', () => a.stop('SIGKILL').then(() => undefined), async () => (await st()).active === 'b');
    a = await startClusterNode(config, 'a');
    procs.push(a);
    await measure('fail-back after restart and resync', async () => undefined, async () => (await st()).active === 'a' && (await st()).failbacks >= 1);
    await measure('SIGSTOP of the active node', async () => void a.proc.kill('SIGSTOP'), async () => (await st()).active === 'b');
    a.proc.kill('SIGCONT');
    await measure('fail-back after SIGCONT and resync', async () => undefined, async () => (await st()).active === 'a' && (await st()).failbacks >= 2);
    stop = true;
    await writer;
    await client.disconnect();
    await proxy.stop();
  } finally {
    for (const proc of procs) await proc.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
