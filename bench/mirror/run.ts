// Mirroring benchmark: write speed of a mirrored pair vs a standalone node, of a pair whose peer
// link is encrypted (TLS-PSK, security.clusterSecret; mutual x509, security.peerCertificates) vs
// a plain one, and resync time for 1 %, 10 % and 100 % of a volume dirty vs nbdcopy copying the
// same volume between two nbdkits; then the full sync of a new node for a mostly empty thin
// volume (--thin-size virtual, --thin-data of it written, spread evenly in 1 MiB pieces) vs
// nbdcopy copying just that data, and `nbd-mirror verify` of that volume once both nodes have it.
//   npm run bench:mirror [-- --size 4G] [--runtime 5] [--json] [--writes-only] [--thin-only] [--thin-size 64G] [--thin-data 1G]
// --writes-only: the write rows only (no resync part); --thin-only: the thin full sync and verify only.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSize } from '../../src/config/units.js';
import { issueCertificate, makeCa } from '../../src/security/keygen-ca.js';
import { pairPorts, until, volumeStatus, writePairConfig } from '../../test/support/cluster.js';
import { NbdClient } from '../../test/support/nbd-client.js';
import { cliPath, startClusterNode, startNbdkit, startNbdMirror, type RunningServer } from '../../test/support/processes.js';
import { toolEnv } from '../../test/support/tools.js';

const { values: opts } = parseArgs({
  options: { size: { type: 'string', default: '4G' }, runtime: { type: 'string', default: '5' }, json: { type: 'boolean', default: false }, 'writes-only': { type: 'boolean', default: false },
    'thin-only': { type: 'boolean', default: false },
    'thin-size': { type: 'string', default: '64G' },
    'thin-data': { type: 'string', default: '1G' },
  },
});
const SIZE = parseSize(opts.size!);
const MiB = 2 ** 20;
const out = (row: Record<string, unknown>, text: string) => console.log(opts.json ? JSON.stringify(row) : text);

function fioIops(uri: string, rw: string, bs: string, iodepth: number, dir: string): number {
  const file = join(dir, 'fio.json');
  execFileSync('fio', ['--name=m', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, `--bs=${bs}`, `--iodepth=${iodepth}`, '--size=1G', '--time_based', `--runtime=${opts.runtime}`, '--output-format=json', `--output=${file}`], { env: toolEnv(), stdio: 'ignore' });
  return JSON.parse(readFileSync(file, 'utf8')).jobs[0].write.iops as number;
}

/** Seconds nbdcopy takes to copy `bytes` of data (a full, allocated source) between two nbdkits. */
async function nbdcopySeconds(dir: string, bytes: number, procs: RunningServer[]): Promise<number> {
  const src = join(dir, 'src.img');
  const dst = join(dir, 'dst.img');
  for (const f of [src, dst]) {
    writeFileSync(f, '');
    truncateSync(f, bytes);
  }
  const block = Buffer.alloc(MiB, 0x5a);
  const k1 = await startNbdkit(src);
  const k2 = await startNbdkit(dst);
  procs.push(k1, k2);
  const direct = await NbdClient.connect({ port: k1.port });
  for (let off = 0; off < bytes; off += MiB) await direct.write(off, block);
  direct.close();
  const t = Date.now();
  execFileSync('nbdcopy', ['--connections=4', k1.uri(), k2.uri()], { env: toolEnv() });
  return (Date.now() - t) / 1000;
}

/**
 * Full sync of a new, empty node b for a thin volume of `--thin-size` with `--thin-data` written
 * on a alone (1 MiB pieces spread evenly), vs nbdcopy of the data alone.
 */
async function thinFullSync(dir: string, procs: RunningServer[]): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const virtual = parseSize(opts['thin-size']!);
  const data = parseSize(opts['thin-data']!);
  const copySeconds = await nbdcopySeconds(dir, data, procs);
  const p = await pairPorts();
  const poolMiB = Math.ceil(data / MiB) + 256;
  const config = writePairConfig(join(dir, 'thin.json'), p, opts['thin-size']!, p.peerB, { pool: { size: `${poolMiB}M`, unit: '1M' }, nodeA: { dataDir: 'ta' }, nodeB: { dataDir: 'tb' } });
  const a = await startClusterNode(config, 'a');
  procs.push(a);
  const client = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
  const pieces = data / MiB;
  const block = Buffer.alloc(MiB, 0x3c);
  for (let i = 0; i < pieces; i++) await client.write(Math.floor((i * virtual) / pieces / MiB) * MiB, block);
  await client.flush();
  client.close();
  const t = Date.now();
  const b = await startClusterNode(config, 'b');
  procs.push(b);
  await until(async () => {
    const sb = await volumeStatus(p.adminB);
    return sb.disk === 'UpToDate' && sb.resync === null && sb.lastResync !== null;
  }, 600_000);
  const wall = (Date.now() - t) / 1000;
  const { seconds, wireBytes } = (await volumeStatus(p.adminB)).lastResync!;
  if (!opts.json) console.log(`\n# full sync of a thin volume: ${opts['thin-size']} virtual, ${opts['thin-data']} written in 1 MiB pieces spread evenly, new empty node`);
  out({ case: 'nbdcopy thin data', bytes: data, seconds: copySeconds }, `nbdcopy ${opts['thin-data']} between two nbdkit: ${copySeconds.toFixed(2)} s`);
  out(
    { case: 'thin full sync', virtualBytes: virtual, dataBytes: data, seconds, wallSeconds: wall, wireBytes, vsNbdcopy: copySeconds / seconds },
    `full sync ${opts['thin-size']} thin, ${opts['thin-data']} data: ${seconds.toFixed(2)} s (${(wireBytes / MiB).toFixed(0)} MiB over the link); start to UpToDate ${wall.toFixed(2)} s; nbdcopy / sync ${(copySeconds / seconds).toFixed(2)}x`,
  );
  // Verify of the synced pair, three runs: the CLI's wall time (start to report).
  for (let run = 1; run <= 3; run++) {
    const t0 = Date.now();
    const report = JSON.parse(execFileSync(process.execPath, [cliPath, 'verify', '--admin', `127.0.0.1:${p.adminA}`, '--volume', 'vol0', '--json'], { encoding: 'utf8' })) as { seconds: number; outOfSyncBytes: number; holeBytes: number; skippedHoleBytes?: number };
    const verifyWall = (Date.now() - t0) / 1000;
    out(
      { case: 'thin verify', run, virtualBytes: virtual, dataBytes: data, wallSeconds: verifyWall, ...report },
      `nbd-mirror verify ${opts['thin-size']} thin, ${opts['thin-data']} data, run ${run}: ${verifyWall.toFixed(2)} s (node: ${report.seconds.toFixed(2)} s); out of sync ${report.outOfSyncBytes}, holes compared ${(report.holeBytes / MiB).toFixed(0)} MiB, holes skipped ${report.skippedHoleBytes === undefined ? '-' : (report.skippedHoleBytes / MiB).toFixed(0)} MiB`,
    );
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-benchm-'));
  const procs: RunningServer[] = [];
  try {
    if (opts['thin-only']) return await thinFullSync(dir, procs);
    // --- write speed: standalone vs mirrored ---------------------------------------------------
    const single = await startNbdMirror(['--export', `disk=${join(dir, 'single.img')}`, '--size', opts.size!]);
    procs.push(single);
    const p = await pairPorts();
    const config = writePairConfig(join(dir, 'cluster.json'), p, opts.size!);
    const a = await startClusterNode(config, 'a');
    let b = await startClusterNode(config, 'b');
    procs.push(a, b);
    await until(async () => (await volumeStatus(p.adminA)).connection === 'Connected' && (await volumeStatus(p.adminB)).disk === 'UpToDate', 30_000);
    // The same pair with an encrypted peer link, in a folder of its own (its data dirs, its
    // secret), and one with mutual x509 (a CA and a certificate per node, as keygen --ca makes them).
    const tlsDir = join(dir, 'tls');
    mkdirSync(tlsDir);
    writeFileSync(join(tlsDir, 'cluster.secret'), `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const pt = await pairPorts();
    const tlsConfig = writePairConfig(join(tlsDir, 'cluster.json'), pt, opts.size!, pt.peerB, { security: { clusterSecret: 'cluster.secret' } });
    procs.push(await startClusterNode(tlsConfig, 'a'), await startClusterNode(tlsConfig, 'b'));
    const x509Dir = join(dir, 'x509');
    const ca = await makeCa();
    for (const node of ['a', 'b']) {
      const own = await issueCertificate(ca, { node, hosts: ['127.0.0.1'] });
      mkdirSync(join(x509Dir, 'certs', node), { recursive: true });
      for (const [f, text] of [['ca-cert.pem', ca.cert], ['server-cert.pem', own.cert], ['server-key.pem', own.key]] as const) writeFileSync(join(x509Dir, 'certs', node, f), text, { mode: 0o600 });
    }
    const px = await pairPorts();
    const x509Config = writePairConfig(join(x509Dir, 'cluster.json'), px, opts.size!, px.peerB, { security: { peerCertificates: 'certs' } });
    procs.push(await startClusterNode(x509Config, 'a'), await startClusterNode(x509Config, 'b'));
    for (const q of [pt, px]) await until(async () => (await volumeStatus(q.adminA)).connection === 'Connected' && (await volumeStatus(q.adminB)).disk === 'UpToDate', 30_000);
    if (!opts.json) console.log(`# mirrored pair vs standalone, ${opts.size} volume, fio ${opts.runtime}s per run, median of 3 alternating rounds after preconditioning, ${new Date().toISOString()}`);
    const mirrorUri = `nbd://127.0.0.1:${p.nbdA}/vol0`;
    const tlsUri = `nbd://127.0.0.1:${pt.nbdA}/vol0`;
    const x509Uri = `nbd://127.0.0.1:${px.nbdA}/vol0`;
    // Precondition: fio's 1 GiB region allocated on every file first, so no side pays ext4 block
    // allocation that the other does not (a fresh sparse file is much slower to write randomly).
    for (const uri of [single.uri('disk'), mirrorUri, tlsUri, x509Uri]) execFileSync('fio', ['--name=fill', '--ioengine=nbd', `--uri=${uri}`, '--rw=write', '--bs=1M', '--iodepth=8', '--size=1G'], { env: toolEnv(), stdio: 'ignore' });
    const median = (xs: number[]) => xs.sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
    const encrypted: Array<{ name: string; plain: number; tls: number; x509: number }> = [];
    for (const [name, rw, bs, qd, target] of [
      ['4k randwrite QD16', 'randwrite', '4k', 16, 0.6],
      ['1M write QD8', 'write', '1M', 8, undefined],
    ] as const) {
      // Median of 3 alternating rounds: this kind of machine drifts by tens of percent.
      const runs = { standalone: [] as number[], mirrored: [] as number[], tls: [] as number[], x509: [] as number[] };
      for (let round = 0; round < 3; round++) {
        runs.standalone.push(fioIops(single.uri('disk'), rw, bs, qd, dir));
        runs.mirrored.push(fioIops(mirrorUri, rw, bs, qd, dir));
        runs.tls.push(fioIops(tlsUri, rw, bs, qd, dir));
        runs.x509.push(fioIops(x509Uri, rw, bs, qd, dir));
      }
      const standalone = median(runs.standalone);
      const mirrored = median(runs.mirrored);
      encrypted.push({ name, plain: mirrored, tls: median(runs.tls), x509: median(runs.x509) });
      const ratio = mirrored / standalone;
      out(
        { case: name, standaloneIops: standalone, mirroredIops: mirrored, ratio },
        `${name.padEnd(20)} standalone ${standalone.toFixed(0).padStart(7)} IOPS  mirrored ${mirrored.toFixed(0).padStart(7)} IOPS  ${ratio.toFixed(2)}x${target ? `  target >= ${target}x ${ratio >= target ? 'pass' : 'MISS'}` : ''}`,
      );
    }

    if (!opts.json) console.log('\n# mirrored, peer link encrypted (TLS-PSK, mutual x509) vs plain, same rounds');
    for (const { name, plain, tls, x509 } of encrypted) {
      const [ratio, x509Ratio] = [tls / plain, x509 / plain];
      const verdict = (r: number) => `${r.toFixed(2)}x ${r >= 0.8 ? 'pass' : 'MISS'}`;
      out(
        { case: `${name} encrypted link`, plainIops: plain, tlsIops: tls, ratio, x509Iops: x509, x509Ratio },
        `${name.padEnd(20)} plain ${plain.toFixed(0).padStart(7)} IOPS  TLS-PSK ${tls.toFixed(0).padStart(7)} IOPS ${verdict(ratio)}  mutual x509 ${x509.toFixed(0).padStart(7)} IOPS ${verdict(x509Ratio)}  (target >= 0.8x)`,
      );
    }
    if (opts['writes-only']) return;

    // --- baseline: nbdcopy between two nbdkit servers ------------------------------------------
    const copySeconds = await nbdcopySeconds(dir, SIZE, procs);
    const fill = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    const block = Buffer.alloc(MiB, 0x5a);
    out({ case: 'nbdcopy full copy', seconds: copySeconds, gbps: SIZE / copySeconds / 1e9 }, `\nnbdcopy ${opts.size} between two nbdkit: ${copySeconds.toFixed(2)} s (${(SIZE / copySeconds / 1e9).toFixed(2)} GB/s)`);

    // --- resync after b was away while a wrote pct % of the volume -----------------------------
    const results: Record<number, number> = {};
    for (const pct of [1, 10, 100]) {
      await b.stop('SIGKILL');
      await until(async () => (await volumeStatus(p.adminA)).connection !== 'Connected');
      const blocks = SIZE / MiB;
      const step = Math.round(100 / pct);
      for (let i = 0; i < blocks; i += step) await fill.write(i * MiB, block);
      await fill.flush();
      const dirty = (await volumeStatus(p.adminA)).outOfSyncBytes;
      b = await startClusterNode(config, 'b');
      procs.push(b);
      const t = Date.now(); // from b listening: the process start itself is not resync time
      await until(async () => {
        const [sa, sb] = [await volumeStatus(p.adminA), await volumeStatus(p.adminB)];
        return sa.connection === 'Connected' && sb.disk === 'UpToDate' && sb.resync === null && sa.outOfSyncBytes === 0;
      }, 600_000);
      const wall = (Date.now() - t) / 1000;
      // The resync itself, as the target timed it (decision to UpToDate); `wall` adds the
      // reconnect (a's dial backoff, up to 250 ms) and this script's polling.
      const seconds = (await volumeStatus(p.adminB)).lastResync!.seconds;
      results[pct] = seconds;
      out(
        { case: `resync ${pct}% dirty`, dirtyBytes: dirty, seconds, wallSeconds: wall, gbps: dirty / seconds / 1e9 },
        `resync ${String(pct).padStart(3)} % dirty (${(dirty / 1e9).toFixed(2)} GB): ${seconds.toFixed(2)} s (${(dirty / seconds / 1e9).toFixed(2)} GB/s); restart to UpToDate ${wall.toFixed(2)} s`,
      );
    }
    fill.close();
    if (!opts.json) {
      const full = results[100]!;
      console.log('\ntargets');
      console.log(`  full resync throughput vs nbdcopy     ${(copySeconds / full).toFixed(2)}x  target >= 0.8x  ${copySeconds / full >= 0.8 ? 'pass' : 'MISS'}`);
      console.log(`  1 % dirty resync vs full copy faster  ${(full / results[1]!).toFixed(1)}x  target >= 50x  ${full / results[1]! >= 50 ? 'pass' : 'MISS'}`);
    }
    await thinFullSync(join(dir, 'thin'), procs);
  } finally {
    for (const pr of procs) await pr.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
