// Chaos rounds against a real two-node cluster, shared by the CI test (a few rounds) and the
// soak script (bench/chaos/soak.ts, as many as you like). One round:
//   clients write verifiable blocks through both nodes (every acknowledged write recorded), and
//   fio --verify writes through the node that will survive → kill -9 of the other at a random
//   instant → the survivor goes on → restart → both UpToDate → online verify finds nothing →
//   every acknowledged write reads back through both nodes → the resync copied no more than the
//   survivor's dirty bits plus the activity log of the killed node.
// With a witness the survivor goes on only once the witness grants it, and the grant must be
// given back before the next round (else killing the holder would leave no writer).
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { VolumeStatus } from '../../src/replication/cluster-node.js';
import { pairPorts, until, volumeStatus, witnessGrants, type PairPorts } from './cluster.js';
import { NbdClient } from './nbd-client.js';
import { mountPowerCut, type PowerCutMount } from './powercut.js';
import { cliPath, startClusterNode, startWitnessProcess, type RunningServer } from './processes.js';
import { toolEnv } from './tools.js';
import { blockContent } from './write-ledger.js';

const MiB = 2 ** 20;
const BLOCK = 4096;
export const CHAOS_SIZE = 64 * MiB;
/** Activity log of the chaos cluster: 16 extents of 256 KiB, so the resync bound is tight. */
export const CHAOS_AL = { extent: 256 * 1024, extents: 16 };
const REGIONS = { a: [0, 24 * MiB], b: [24 * MiB, 48 * MiB], fio: [48 * MiB, 64 * MiB] } as const;

export interface ChaosCluster {
  readonly dir: string;
  readonly ports: PairPorts;
  readonly config: string;
  nodes: Record<'a' | 'b', RunningServer>;
  readonly witness?: RunningServer;
  /** Write id last acknowledged per 4 KiB block (0: never written), and ids in flight at a kill. */
  readonly acked: Uint32Array;
  readonly maybe: Map<number, number[]>;
  nextWriteId: number;
  /** Power-cut mode: each node's data directory is on a power-cut filesystem (powercut.ts). */
  readonly power?: Record<'a' | 'b', { backing: string; mountpoint: string; mount: PowerCutMount }>;
}

export interface RoundResult {
  round: number;
  killed: 'a' | 'b';
  /** Power-cut mode: what the cut dropped (unsynced sectors). */
  cut?: { how: string; sectors: number };
  killAfterMs: number;
  writesAcked: number;
  survivorDirtyBytes: number;
  resyncedBytes: number;
  wireBytes: number;
  boundBytes: number;
  verifyOutOfSyncBytes: number;
  seconds: number;
}

/** `pool`: the volume is a thin volume in a pool of each node (64 KiB units, room for all of it). */
export async function startChaosCluster(dir: string, opts: { witness?: boolean; power?: boolean; pool?: boolean } = {}): Promise<ChaosCluster> {
  const ports = await pairPorts();
  const power = opts.power ? await powerMounts(dir) : undefined;
  const dataDir = (n: 'a' | 'b') => power?.[n].mountpoint ?? n;
  const config = join(dir, 'cluster.json');
  const witness = opts.witness ? await startWitnessProcess(join(dir, 'witness.json')) : undefined;
  writeFileSync(
    config,
    JSON.stringify({
      nodes: {
        a: { nbd: `127.0.0.1:${ports.nbdA}`, peer: `127.0.0.1:${ports.peerA}`, admin: `127.0.0.1:${ports.adminA}`, dataDir: dataDir('a') },
        b: { nbd: `127.0.0.1:${ports.nbdB}`, peer: `127.0.0.1:${ports.peerB}`, admin: `127.0.0.1:${ports.adminB}`, dataDir: dataDir('b') },
      },
      volumes: { vol0: { size: CHAOS_SIZE } },
      activityLog: { extent: CHAOS_AL.extent, extents: CHAOS_AL.extents },
      ...(opts.pool ? { pool: { size: CHAOS_SIZE + 16 * MiB, unit: 64 * 1024 } } : {}),
      ...(witness ? { witness: `127.0.0.1:${witness.port}` } : {}),
    }),
  );
  const nodes = { a: await startClusterNode(config, 'a'), b: await startClusterNode(config, 'b') };
  const c: ChaosCluster = { dir, ports, config, nodes, witness, acked: new Uint32Array(CHAOS_SIZE / BLOCK), maybe: new Map(), nextWriteId: 1, power };
  await untilHealthy(c);
  return c;
}

async function powerMounts(dir: string): Promise<NonNullable<ChaosCluster['power']>> {
  const one = async (n: 'a' | 'b') => {
    const backing = join(dir, `${n}-disk`);
    const mountpoint = join(dir, `${n}-mnt`);
    return { backing, mountpoint, mount: await mountPowerCut(backing, mountpoint) };
  };
  return { a: await one('a'), b: await one('b') };
}

/** Ends node `n` at once: kill -9, and in power-cut mode the unsynced data goes too (then the disk is back). */
async function crash(c: ChaosCluster, n: 'a' | 'b', rnd: () => number): Promise<RoundResult['cut']> {
  await c.nodes[n].stop('SIGKILL');
  const p = c.power?.[n];
  if (!p) return undefined;
  const torn = rnd() < 0.5;
  const seed = Math.floor(rnd() * 1e9);
  const dropped = await p.mount.cut(torn ? { torn: seed } : 'all');
  p.mount = await mountPowerCut(p.backing, p.mountpoint);
  return { how: torn ? `torn, seed ${seed}` : 'all', sectors: dropped.sectors };
}

const admin = (c: ChaosCluster, n: 'a' | 'b') => (n === 'a' ? c.ports.adminA : c.ports.adminB);
const nbd = (c: ChaosCluster, n: 'a' | 'b') => (n === 'a' ? c.ports.nbdA : c.ports.nbdB);

async function untilHealthy(c: ChaosCluster): Promise<[VolumeStatus, VolumeStatus]> {
  let last: [VolumeStatus, VolumeStatus] | undefined;
  await until(async () => {
    last = [await volumeStatus(c.ports.adminA), await volumeStatus(c.ports.adminB)];
    const synced = last.every((s) => s.connection === 'Connected' && s.disk === 'UpToDate' && s.resync === null && s.outOfSyncBytes === 0);
    return synced && (!c.witness || Object.keys(await witnessGrants(c.witness.port)).length === 0);
  }, 60_000);
  return last!;
}

/** Writes random 4–64 KiB runs of blocks in `region` until stopped or the connection dies. */
async function writer(c: ChaosCluster, node: 'a' | 'b', region: readonly [number, number], rnd: () => number, stop: { now: boolean }): Promise<number> {
  const client = await NbdClient.connect({ port: nbd(c, node), exportName: 'vol0' });
  const blocks = (region[1] - region[0]) / BLOCK;
  let n = 0;
  try {
    while (!stop.now) {
      const count = 1 + Math.floor(rnd() * 16);
      const first = region[0] / BLOCK + Math.floor(rnd() * (blocks - count));
      const id = c.nextWriteId++;
      const data = Buffer.concat(Array.from({ length: count }, (_, i) => blockContent(id, first + i)));
      for (let i = 0; i < count; i++) c.maybe.set(first + i, [...(c.maybe.get(first + i) ?? []), id]);
      try {
        await client.write(first * BLOCK, data);
      } catch {
        return n; // the node died under this write: it stays a "maybe"
      }
      for (let i = 0; i < count; i++) {
        c.acked[first + i] = id;
        c.maybe.delete(first + i);
      }
      n++;
    }
    return n;
  } finally {
    client.close();
  }
}

function fio(c: ChaosCluster, node: 'a' | 'b'): Promise<{ ok: boolean; output: string }> {
  const [offset, end] = REGIONS.fio;
  const args = ['--name=chaos', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${nbd(c, node)}/vol0`, '--rw=randwrite', '--bs=4k', '--iodepth=8', `--offset=${offset}`, `--size=${end - offset}`, '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0', '--output-format=terse'];
  return new Promise((resolve) => execFile('fio', args, { env: toolEnv(), timeout: 120_000 }, (err, stdout, stderr) => resolve({ ok: !err, output: `${stdout}${stderr}` })));
}

/** `nbd-mirror verify --json` through the node whose admin endpoint is on `adminPort`. */
export function verifyVolume(adminPort: number): Promise<{ code: number; outOfSyncBytes: number; stderr: string }> {
  return new Promise((resolve) =>
    execFile(process.execPath, [cliPath, 'verify', '--admin', `127.0.0.1:${adminPort}`, '--volume', 'vol0', '--json'], { timeout: 120_000 }, (err, stdout, stderrOut) => {
      let stderr = stderrOut;
      let outOfSyncBytes = -1;
      try {
        const r = JSON.parse(stdout) as { outOfSyncBytes: number; ranges: Array<{ offset: number; length: number }> };
        outOfSyncBytes = r.outOfSyncBytes;
        if (outOfSyncBytes > 0) stderr += ` first ranges: ${JSON.stringify(r.ranges.slice(0, 8))}`;
      } catch {
        /* reported through code and stderr */
      }
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, outOfSyncBytes, stderr });
    }),
  );
}

/** Every acknowledged write reads back through `node` (blocks with a write in flight at the kill may hold either). */
async function checkContents(c: ChaosCluster, node: 'a' | 'b'): Promise<string[]> {
  const client = await NbdClient.connect({ port: nbd(c, node), exportName: 'vol0' });
  const problems: string[] = [];
  try {
    for (let off = 0; off < REGIONS.fio[0]; off += 4 * MiB) {
      const data = await client.read(off, 4 * MiB);
      for (let i = 0; i < data.length / BLOCK && problems.length < 5; i++) {
        const block = off / BLOCK + i;
        const got = data.subarray(i * BLOCK, (i + 1) * BLOCK);
        const allowed = [c.acked[block]!, ...(c.maybe.get(block) ?? [])];
        const ok = allowed.some((id) => (id === 0 ? got.every((x) => x === 0) : got.equals(blockContent(id, block))));
        if (!ok) problems.push(`node ${node}: block ${block} holds write ${got.readUInt32LE(0)}/${got.readUInt32LE(4)}, expected one of ${allowed.join(', ')}`);
      }
    }
  } finally {
    client.close();
  }
  return problems;
}

export function seededRandom(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

/** One round; throws with a readable reason when an invariant breaks. */
export async function chaosRound(c: ChaosCluster, round: number, rnd: () => number): Promise<RoundResult> {
  const t0 = Date.now();
  const killed = rnd() < 0.5 ? 'a' : 'b';
  const survivor = killed === 'a' ? 'b' : 'a';
  const stop = { now: false };
  const writers = [writer(c, 'a', REGIONS.a, rnd, stop), writer(c, 'b', REGIONS.b, rnd, stop)];
  const fioRun = fio(c, survivor);
  const killAfterMs = 150 + Math.floor(rnd() * 600);
  await new Promise((r) => setTimeout(r, killAfterMs));
  const cut = await crash(c, killed, rnd);
  // The survivor notices (link timeout) and goes on writing alone for a moment.
  await until(async () => (await volumeStatus(admin(c, survivor))).connection !== 'Connected', 10_000);
  await new Promise((r) => setTimeout(r, 200));
  stop.now = true;
  const writesAcked = (await Promise.all(writers)).reduce((x, y) => x + y, 0);
  const fioResult = await fioRun;
  if (!fioResult.ok) throw new Error(`round ${round}: fio --verify through the surviving node ${survivor} failed:\n${fioResult.output.slice(-2000)}`);
  const survivorDirtyBytes = (await volumeStatus(admin(c, survivor))).outOfSyncBytes;
  c.nodes[killed] = await startClusterNode(c.config, killed);
  const [sa, sb] = await untilHealthy(c);
  const back = killed === 'a' ? sa : sb;
  const resyncedBytes = back.lastResync?.bytes ?? 0;
  const wireBytes = back.lastResync?.wireBytes ?? 0;
  const boundBytes = survivorDirtyBytes + CHAOS_AL.extent * CHAOS_AL.extents;
  if (resyncedBytes > boundBytes) throw new Error(`round ${round}: resync covered ${resyncedBytes} bytes, more than dirty bits + activity log (${boundBytes})`);
  const v = await verifyVolume(admin(c, round % 2 === 0 ? 'a' : 'b'));
  if (v.code !== 0 || v.outOfSyncBytes !== 0) throw new Error(`round ${round}: verify after resync: exit ${v.code}, ${v.outOfSyncBytes} bytes out of sync ${v.stderr}`);
  const problems = [...(await checkContents(c, 'a')), ...(await checkContents(c, 'b'))];
  if (problems.length > 0) throw new Error(`round ${round}: acknowledged writes lost:\n${problems.join('\n')}`);
  return { round, killed, cut, killAfterMs, writesAcked, survivorDirtyBytes, resyncedBytes, wireBytes, boundBytes, verifyOutOfSyncBytes: v.outOfSyncBytes, seconds: (Date.now() - t0) / 1000 };
}

export async function stopChaosCluster(c: ChaosCluster): Promise<void> {
  for (const n of Object.values(c.nodes)) await n.stop('SIGKILL');
  await c.witness?.stop('SIGKILL');
  for (const p of Object.values(c.power ?? {})) await p.mount.stop();
}

export function formatRound(r: RoundResult): string {
  const mib = (n: number) => `${(n / MiB).toFixed(2)} MiB`;
  const how = r.cut ? `power cut of ${r.killed} (${r.cut.how}: ${r.cut.sectors} unsynced sectors dropped)` : `killed ${r.killed}`;
  return `round ${String(r.round).padStart(3)}: ${how} after ${String(r.killAfterMs).padStart(3)} ms, ${String(r.writesAcked).padStart(5)} writes acked, survivor dirty ${mib(r.survivorDirtyBytes)}, resynced ${mib(r.resyncedBytes)} (bound ${mib(r.boundBytes)}), on the wire ${mib(r.wireBytes)}, verify 0 B out of sync, ${r.seconds.toFixed(1)} s`;
}
