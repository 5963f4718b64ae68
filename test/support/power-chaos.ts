// Power-cut chaos aimed at phases (issue 14, items 2 and 4), shared by the CI test
// (test/cluster/power-chaos.test.ts: one round per phase) and the soak (`npm run soak -- --power`).
//
// A pair and its witness, each with its data directory (the witness: its state file) on a
// power-cut filesystem (test/support/powercut/). One round: two clients write through the nodes
// (FUA on some writes, a FLUSH every few), the round's phase drives the pair into a state it reads
// from the nodes' status — a resync running, a verify running, the witness being asked… — and
// cuts the power of one node, both, or the witness (kill -9, and what they never synced is
// dropped: all of it or sectors torn at random). Then everything is restarted with disk faults
// cleared, and the round checks: both nodes UpToDate and connected, the witness's grant given
// back, online verify finds 0 bytes out of sync, the two data files are byte-identical, every
// sector holds what the write ledger allows (write-ledger.ts: flushed/FUA writes always, every
// acknowledged write while one node stayed up), no node process ended on its own, and every
// metadata file opened again (a node refuses to start on a damaged one).
//
// Phases are entries of PHASES: adding one (pool allocation, import) is one more entry.
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fetchStatus, postAction } from '../../src/admin/admin-client.js';
import type { NodeStatus, VolumeStatus } from '../../src/replication/cluster-node.js';
import { CHAOS_AL, seededRandom, verifyVolume } from './chaos.js';
import { loadFaults as loadNodeFaults, pairPorts, until, witnessGrants, type PairPorts } from './cluster.js';
import { NbdClient } from './nbd-client.js';
import { mountPowerCut, type PowerCutMount } from './powercut.js';
import { freePort, startClusterNode, startedLogs, startWitnessProcess, type RunningServer } from './processes.js';
import { WriteLedger } from './write-ledger.js';

export { seededRandom };

type Node = 'a' | 'b';
export type Target = Node | 'w';
const MiB = 2 ** 20;
const BLOCK = 4096;
const SIZE = 64 * MiB;
/** Each client writes its own region (one writer per block keeps a block's writes in order). */
const REGIONS: ReadonlyArray<readonly [number, number]> = [
  [0, 32 * MiB],
  [32 * MiB, 64 * MiB],
];
const FUA = 1; // NBD_CMD_FLAG_FUA
const other = (n: Node): Node => (n === 'a' ? 'b' : 'a');

interface Disk {
  readonly backing: string;
  readonly mountpoint: string;
  mount: PowerCutMount;
}

export interface PowerCluster {
  readonly dir: string;
  readonly ports: PairPorts;
  readonly config: string;
  readonly witnessPort: number;
  readonly witnessState: string;
  readonly faults: Record<Node, string>;
  /** Nodes running with fault rules loaded: restarted (rules cleared) before the round's checks. */
  readonly faulty: Set<Node>;
  nodes: Record<Node, RunningServer | null>;
  witness: RunningServer | null;
  readonly disks: Record<Target, Disk>;
  readonly ledger: WriteLedger;
}

/** `activityLog`: the log's shape (default CHAOS_AL: 16 extents of 256 KiB, so extents come and go). */
export async function startPowerCluster(dir: string, opts: { activityLog?: { extent: number; extents: number } } = {}): Promise<PowerCluster> {
  const ports = await pairPorts();
  const disk = async (t: Target): Promise<Disk> => {
    const backing = join(dir, `${t}-disk`);
    const mountpoint = join(dir, `${t}-mnt`);
    return { backing, mountpoint, mount: await mountPowerCut(backing, mountpoint) };
  };
  const disks = { a: await disk('a'), b: await disk('b'), w: await disk('w') };
  const witnessPort = await freePort();
  const config = join(dir, 'cluster.json');
  writeFileSync(
    config,
    JSON.stringify({
      nodes: {
        a: { nbd: `127.0.0.1:${ports.nbdA}`, peer: `127.0.0.1:${ports.peerA}`, admin: `127.0.0.1:${ports.adminA}`, dataDir: disks.a.mountpoint },
        b: { nbd: `127.0.0.1:${ports.nbdB}`, peer: `127.0.0.1:${ports.peerB}`, admin: `127.0.0.1:${ports.adminB}`, dataDir: disks.b.mountpoint },
      },
      volumes: { vol0: { size: SIZE } },
      activityLog: opts.activityLog ?? CHAOS_AL,
      witness: `127.0.0.1:${witnessPort}`,
      // Writes fail at once without quorum (no 30 s suspends in a round); a lost link is seen in 1 s.
      quorum: { onNoQuorum: 'io-error' },
      link: { timeout: 1000 },
      // Resync and verify crawl while clients write (4 MiB/s: windows to cut in), run free after.
      resync: { busyRate: '4M' },
    }),
  );
  const faults = { a: join(dir, 'faults-a.json'), b: join(dir, 'faults-b.json') };
  const c: PowerCluster = {
    dir,
    ports,
    config,
    witnessPort,
    witnessState: join(disks.w.mountpoint, 'witness.json'),
    faults,
    faulty: new Set(),
    nodes: { a: null, b: null },
    witness: null,
    disks,
    ledger: new WriteLedger(SIZE / BLOCK),
  };
  await restartDown(c);
  await untilHealthy(c);
  return c;
}

export async function stopPowerCluster(c: PowerCluster): Promise<void> {
  for (const n of ['a', 'b'] as const) await c.nodes[n]?.stop('SIGKILL');
  await c.witness?.stop('SIGKILL');
  for (const d of Object.values(c.disks)) await d.mount.stop();
}

const adminPort = (c: PowerCluster, n: Node) => (n === 'a' ? c.ports.adminA : c.ports.adminB);
const nbdPort = (c: PowerCluster, n: Node) => (n === 'a' ? c.ports.nbdA : c.ports.nbdB);

async function nodeStatus(c: PowerCluster, n: Node): Promise<NodeStatus | null> {
  if (!c.nodes[n]) return null;
  try {
    return await fetchStatus({ host: '127.0.0.1', port: adminPort(c, n) });
  } catch {
    return null;
  }
}

async function vol(c: PowerCluster, n: Node): Promise<VolumeStatus | null> {
  return (await nodeStatus(c, n))?.volumes.vol0 ?? null;
}

/** Polls `cond` (every 50 ms) for at most `ms`; resolves whether it came true. */
async function reached(cond: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  try {
    await until(cond, ms);
    return true;
  } catch {
    return false;
  }
}

/** Starts node `n` on its disk, its fault rules cleared (a failed disk comes back repaired). */
async function startNode(c: PowerCluster, n: Node): Promise<RunningServer> {
  writeFileSync(c.faults[n], JSON.stringify({ rules: [] }));
  return (c.nodes[n] = await startClusterNode(c.config, n, ['--test-faults', c.faults[n]]));
}

/** Starts what is down: the witness first, then the nodes. */
async function restartDown(c: PowerCluster): Promise<void> {
  c.witness ??= await startWitnessProcess(c.witnessState, [], c.witnessPort);
  for (const n of ['a', 'b'] as const) if (!c.nodes[n]) await startNode(c, n);
}

async function untilHealthy(c: PowerCluster, ms = 90_000): Promise<void> {
  let last: unknown;
  const ok = await reached(async () => {
    const s = [await vol(c, 'a'), await vol(c, 'b')];
    last = s.map((v) => v && { connection: v.connection, disk: v.disk, resync: v.resync, outOfSync: v.outOfSyncBytes, quorum: v.quorum });
    const synced = s.every((v) => v && v.connection === 'Connected' && v.disk === 'UpToDate' && v.resync === null && v.outOfSyncBytes === 0 && !v.peerDiskFailed);
    return synced && Object.keys(await witnessGrants(c.witnessPort)).length === 0;
  }, ms);
  if (!ok) throw new Error(`the pair did not become healthy within ${ms / 1000} s: ${JSON.stringify(last)}`);
}

/**
 * The clients of a round: one writer per region, through its own node or, when that one is
 * down or refuses, the other. Some writes with FUA, a FLUSH every 8–24 writes. A failed write
 * stays in the ledger as "maybe there".
 */
class Load {
  private stopped = false;
  private readonly runs: Array<Promise<void>>;
  /** Open connections: closed by `end` if a request never gets its answer. */
  private readonly clients = new Set<NbdClient>();
  errors = 0;

  constructor(
    private readonly c: PowerCluster,
    /** Its own generator: the writers draw at their own pace, the round's choices stay those of the seed. */
    private readonly rnd: () => number,
  ) {
    this.runs = REGIONS.map((region, i) => this.writer(region, i === 0 ? 'a' : 'b'));
  }

  get acked(): number {
    return this.c.ledger.totals.acked;
  }

  /** Stops the writers; a request still unanswered after `ms` is a problem (its connection is closed): resolves false then. */
  async end(ms = 30_000): Promise<boolean> {
    this.stopped = true;
    const done = await settlesWithin(Promise.all(this.runs), ms);
    if (!done) {
      for (const client of this.clients) client.close();
      await Promise.all(this.runs);
    }
    return done;
  }

  private async writer(region: readonly [number, number], home: Node): Promise<void> {
    const { ledger } = this.c;
    const blocks = (region[1] - region[0]) / BLOCK;
    let conn: { client: NbdClient; through: Node } | null = null;
    let prefer = home;
    let sinceFlush = 0;
    try {
      while (!this.stopped) {
        conn ??= await this.connect(prefer);
        if (!conn) {
          await new Promise((r) => setTimeout(r, 50)); // both down: poll until a node is back or the round ends
          continue;
        }
        const count = 1 + Math.floor(this.rnd() * 16);
        const first = region[0] / BLOCK + Math.floor(this.rnd() * (blocks - count));
        const fua = this.rnd() < 0.1;
        const { id, data } = ledger.start(first, count);
        try {
          await conn.client.write(first * BLOCK, data, fua ? FUA : 0);
          ledger.acked(id, first, count, fua);
          if (++sinceFlush >= 8 + this.rnd() * 16) {
            sinceFlush = 0;
            const covers = ledger.flushStart();
            await conn.client.flush();
            ledger.flushDone(covers);
          }
        } catch {
          this.errors++;
          conn.client.close();
          prefer = other(conn.through); // the node died or refused: try the other one first
          conn = null;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    } finally {
      conn?.client.close();
    }
  }

  /** A connection through `prefer`, else the other node; null while both are down. */
  private async connect(prefer: Node): Promise<{ client: NbdClient; through: Node } | null> {
    for (const n of [prefer, other(prefer)]) {
      if (!this.c.nodes[n]) continue;
      const client = await connectWithin(nbdPort(this.c, n), 5_000);
      if (client) {
        this.clients.add(client);
        client.socket.once('close', () => this.clients.delete(client));
        return { client, through: n };
      }
    }
    return null;
  }
}

/** Does `p` settle within `ms`? */
function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout;
  const late = new Promise<boolean>((res) => (timer = setTimeout(() => res(false), ms)));
  return Promise.race([p.then(() => true, () => true), late]).finally(() => clearTimeout(timer));
}

/** An NBD connection to vol0 on `port`, or null if it fails or its handshake takes longer than `ms` (a node going down). */
async function connectWithin(port: number, ms: number): Promise<NbdClient | null> {
  const connecting = NbdClient.connect({ port, exportName: 'vol0' });
  if (await settlesWithin(connecting, ms)) return connecting.catch(() => null);
  void connecting.then((late) => late.close(), () => undefined);
  return null;
}

/** One cut: which targets lost power together, in which phase, and what was dropped. */
export interface CutRecord {
  phase: string;
  /** Did the status show the phase when the power went (else the phase had ended: a miss)? */
  hit: boolean;
  targets: Target[];
  dropped: string;
}

interface RoundContext {
  readonly c: PowerCluster;
  readonly rnd: () => number;
  readonly load: Load;
  /** Nodes that went down in this round (cut, killed or stopped): one → every acknowledged write must survive. */
  readonly down: Set<Node>;
  readonly cuts: CutRecord[];
  readonly notes: string[];
  readonly problems: string[];
}

/** Power cut of `targets` at once: kill -9 of each, then its unsynced data dropped (`how`), its disk back. Says what was dropped. */
async function powerCut(c: PowerCluster, targets: readonly Target[], how: (t: Target) => 'all' | { torn: number }): Promise<string> {
  await Promise.all(targets.map((t) => (t === 'w' ? c.witness : c.nodes[t])?.stop('SIGKILL')));
  const dropped: string[] = [];
  const failed: string[] = [];
  for (const t of targets) {
    if (t === 'w') c.witness = null;
    else c.nodes[t] = null;
    const d = c.disks[t];
    const h = how(t);
    // A cut the filesystem could not make is a problem of the round; its disk is mounted again
    // all the same, so the rounds after it run on a working harness.
    const r = await d.mount.cut(h).catch((e: Error) => (failed.push(`${t}: ${e.message}`), null));
    d.mount = await mountPowerCut(d.backing, d.mountpoint);
    if (r) dropped.push(`${t}: ${h === 'all' ? 'all' : `torn seed ${h.torn}`}, ${r.sectors} sectors/${r.entries} entries`);
  }
  if (failed.length > 0) throw new Error(`power cut failed: ${failed.join('; ')}`);
  return dropped.join('; ');
}

/** A round's cut: all unsynced data, or sectors torn at random (seeded), per target. */
async function cut(x: RoundContext, phase: string, hit: boolean, targets: Target[]): Promise<void> {
  checkAlive(x);
  for (const t of targets) if (t !== 'w') x.down.add(t);
  checkHarness(x);
  const dropped = await powerCut(x.c, targets, () => (x.rnd() < 0.5 ? { torn: Math.floor(x.rnd() * 1e9) } : 'all'));
  x.cuts.push({ phase, hit, targets, dropped });
}

/** The power-cut filesystems' own faults (a harness bug, not a disk error): problems of the round, each told once. */
function checkHarness(x: RoundContext): void {
  for (const d of Object.values(x.c.disks)) x.problems.push(...d.mount.faults().map((f) => `harness: ${f}`));
}

/** A node process that ended without being stopped is a crash: a problem. */
function checkAlive(x: RoundContext): void {
  for (const n of ['a', 'b'] as const) {
    const p = x.c.nodes[n]?.proc;
    if (p && (p.exitCode !== null || p.signalCode !== null)) {
      x.problems.push(`node ${n} ended on its own (exit ${p.exitCode}, signal ${p.signalCode}): a crash`);
      x.c.nodes[n] = null;
      x.down.add(n);
    }
  }
}

async function gracefulStop(x: RoundContext, n: Node): Promise<void> {
  const code = await x.c.nodes[n]!.stop('SIGTERM', 20_000);
  if (code !== 0) x.problems.push(`node ${n}: graceful stop exited ${code}`);
  x.c.nodes[n] = null;
  x.down.add(n);
}

/** Until at least `n` more writes were acknowledged (the clients are busy). */
const afterWrites = (x: RoundContext, n: number, ms = 20_000) => {
  const target = x.load.acked + n;
  return reached(() => x.load.acked >= target, ms);
};

const pick = <T>(rnd: () => number, xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;

/** A node goes down (power cut or graceful stop) and the other writes alone until it has `bytes` out of sync. */
async function peerDown(x: RoundContext, gone: Node, how: 'cut' | 'stop', bytes: number): Promise<boolean> {
  await afterWrites(x, 20);
  if (how === 'cut') await cut(x, 'mirroring', true, [gone]);
  else await gracefulStop(x, gone);
  return reached(async () => {
    const v = await vol(x.c, other(gone));
    return v !== null && v.connection !== 'Connected' && (v.outOfSyncBytes >= bytes || v.disk === 'Failed');
  }, 30_000);
}

/** Restarts `n` and waits for the resync it starts; resolves the resync seen at `fraction` of it, or null if it ended first. */
async function resyncAt(x: RoundContext, n: Node, fraction: number, checksum: boolean | null): Promise<VolumeStatus['resync']> {
  await startNode(x.c, n);
  let seen: VolumeStatus['resync'] = null;
  await reached(async () => {
    const v = await vol(x.c, n);
    const r = v?.resync ?? null;
    if (r && r.totalBytes > 0 && (checksum === null || r.checksum === checksum) && r.doneBytes >= fraction * r.totalBytes) seen = r;
    // Over: the resync ended (or never needed to run) before the point we aimed at.
    const over = (v !== null && v.connection === 'Connected' && v.resync === null && v.disk === 'UpToDate') || v?.disk === 'Failed';
    return seen !== null || over;
  }, 30_000);
  return seen;
}

export interface Phase {
  readonly name: string;
  /** Drives the pair into the phase and cuts; the round then recovers and checks. */
  run(x: RoundContext): Promise<void>;
}

/** The phases a round can aim at. One entry each: pool allocation/free and import go here when they exist. */
export const PHASES: readonly Phase[] = [
  {
    name: 'mirroring',
    async run(x) {
      await afterWrites(x, 20 + Math.floor(x.rnd() * 300));
      const both = x.rnd() < 0.4;
      const hit = (await vol(x.c, 'a'))?.connection === 'Connected';
      await cut(x, 'mirroring', hit, both ? ['a', 'b'] : [pick(x.rnd, ['a', 'b'] as const)]);
    },
  },
  {
    name: 'degraded',
    async run(x) {
      const gone = pick(x.rnd, ['a', 'b'] as const);
      const hit = await peerDown(x, gone, x.rnd() < 0.5 ? 'cut' : 'stop', 64 * 1024 + Math.floor(x.rnd() * 2 * MiB));
      await cut(x, 'degraded', hit, [other(gone)]);
    },
  },
  ...(['source', 'target'] as const).map(
    (role): Phase => ({
      name: `resync-${role}`,
      async run(x) {
        const back = pick(x.rnd, ['a', 'b'] as const);
        // A graceful leave: the resync back is a plain bitmap resync (a crash would make it a checksum one).
        await peerDown(x, back, 'stop', 3 * MiB);
        const seen = await resyncAt(x, back, 0.1 + x.rnd() * 0.6, false);
        const victim = role === 'target' ? back : other(back);
        await cut(x, `resync-${role}`, seen !== null, [victim]);
      },
    }),
  ),
  {
    name: 'verify',
    async run(x) {
      await afterWrites(x, 20);
      const on = pick(x.rnd, ['a', 'b'] as const);
      await postAction({ addr: { host: '127.0.0.1', port: adminPort(x.c, on) } }, '/verify', { volume: 'vol0' });
      const at = MiB / 2 + Math.floor(x.rnd() * 6 * MiB);
      let hit = false;
      await reached(async () => {
        const v = (await vol(x.c, on))?.verify;
        hit = v?.running === true && v.doneBytes >= at;
        return hit || v?.running === false; // there, or the verify ended first
      }, 30_000);
      const both = x.rnd() < 0.4;
      await cut(x, 'verify', hit, both ? ['a', 'b'] : [pick(x.rnd, ['a', 'b'] as const)]);
    },
  },
  {
    name: 'checksum-resync',
    async run(x) {
      const back = pick(x.rnd, ['a', 'b'] as const);
      await afterWrites(x, 20 + Math.floor(x.rnd() * 200));
      await cut(x, 'mirroring', true, [back]);
      // Restarted at once after a crash: the resync compares checksums (activity log + bits).
      const seen = await resyncAt(x, back, x.rnd() * 0.6, true);
      const r = x.rnd();
      await cut(x, 'checksum-resync', seen !== null, r < 0.4 ? [back] : r < 0.8 ? [other(back)] : ['a', 'b']);
    },
  },
  {
    name: 'witness-grant',
    async run(x) {
      const gone = pick(x.rnd, ['a', 'b'] as const);
      const survivor = other(gone);
      await afterWrites(x, 20);
      // The witness is held (SIGSTOP) so the survivor's claim waits in its socket; let go, it
      // writes the grant (temporary file, fsync, rename, directory fsync) and the power goes a
      // random 0–20 ms later: before, during or after the write.
      x.c.witness!.proc.kill('SIGSTOP');
      await cut(x, 'mirroring', true, [gone]);
      // Asking (claiming), or its request timed out (no-quorum): either way a claim waits in the held witness's socket.
      const hit = await reached(async () => ['claiming', 'no-quorum'].includes((await nodeStatus(x.c, survivor))?.quorum.state ?? ''), 15_000);
      x.c.witness!.proc.kill('SIGCONT');
      await new Promise((r) => setTimeout(r, Math.floor(x.rnd() * 20))); // the random instant of the cut
      const withNode = x.rnd() < 0.3;
      await cut(x, 'witness-grant', hit, withNode ? ['w', survivor] : ['w']);
      if (withNode) return;
      // The witness back on what its disk kept: a node that holds the grant must find it there.
      x.c.witness = await startWitnessProcess(x.c.witnessState, [], x.c.witnessPort);
      await reached(async () => (await nodeStatus(x.c, survivor))?.quorum.state === 'alone', 15_000);
      const q = (await nodeStatus(x.c, survivor))?.quorum;
      const grants = await witnessGrants(x.c.witnessPort);
      const holder = Object.values(grants)[0]?.holder ?? null;
      if (q?.grantHeld && holder !== survivor) x.problems.push(`witness-grant: node ${survivor} holds the grant, the restarted witness says ${holder}: a split brain the witness should prevent`);
      x.notes.push(`witness after the cut: grant ${holder ?? 'free'}, ${survivor} ${q?.state}${q?.grantHeld ? ' (holds it)' : ''}`);
    },
  },
  {
    name: 'disk-error',
    async run(x) {
      const bad = pick(x.rnd, ['a', 'b'] as const);
      await afterWrites(x, 20 + Math.floor(x.rnd() * 200));
      const rule = await injectDiskError(x.c, bad, x.rnd);
      const { failed, readErrors } = await untilFailed(x.c, bad, rule.offset, 15_000);
      if (readErrors > 0) x.problems.push(`disk-error: ${readErrors} reads through ${bad} failed although its peer serves them`);
      if (!failed) x.problems.push(`disk-error: ${JSON.stringify(rule)} on ${bad}: status never showed its disk Failed and the peer serving`);
      // The peer's service: clients keep writing through both nodes.
      const errorsBefore = x.load.errors;
      if (!(await afterWrites(x, 30, 15_000))) x.problems.push(`disk-error: clients stalled after ${bad}'s disk failed`);
      if (x.load.errors > errorsBefore) x.problems.push(`disk-error: ${x.load.errors - errorsBefore} client writes failed after ${bad}'s disk failed`);
      x.notes.push(`disk error: ${rule.op} ${rule.errno} at ${rule.offset / MiB} MiB on ${bad}: Failed and served by the peer: ${failed}`);
      const r = x.rnd();
      if (r < 0.25) return; // no cut: the recovery restarts the failed node with its faults cleared
      await cut(x, 'disk-error', failed, r < 0.5 ? [bad] : r < 0.75 ? [other(bad)] : ['a', 'b']);
    },
  },
];

type DiskErrorRule = { op: 'read' | 'write'; errno: 'EIO' | 'ENOSPC'; offset: number; length: string };

/** Node `bad`'s disk starts failing (the test-only fault layer, re-read on SIGUSR2): EIO on reads or writes, or ENOSPC on writes, over 8 MiB. */
async function injectDiskError(c: PowerCluster, bad: Node, rnd: () => number): Promise<DiskErrorRule> {
  const kind = pick(rnd, [
    { op: 'write', errno: 'EIO' },
    { op: 'write', errno: 'ENOSPC' },
    { op: 'read', errno: 'EIO' },
  ] as const);
  const rule = { ...kind, offset: Math.floor(rnd() * 56) * MiB, length: '8M' };
  await loadFaults(c, bad, { seed: Math.floor(rnd() * 2 ** 32), rules: [rule] });
  return rule;
}

/** Node `n`'s fault rules become `spec` (docs/CONFIG.md, test-only fault injection): written, SIGUSR2, loaded. */
export async function loadFaults(c: PowerCluster, n: Node, spec: unknown): Promise<void> {
  const node = c.nodes[n];
  if (!node) throw new Error(`node ${n} is down`);
  c.faulty.add(n);
  await loadNodeFaults(node, c.faults[n], spec);
}

/** Power cut of `targets` (all unsynced data dropped), restart, recovery: then the copies must match (verify, byte compare). */
export async function cutAndCompare(c: PowerCluster, targets: readonly Target[]): Promise<{ outOfSyncBytes: number; identical: boolean }> {
  await powerCut(c, targets, () => 'all');
  await restartDown(c);
  await untilHealthy(c);
  const v = await verifyVolume(c.ports.adminA);
  const identical = readFileSync(join(c.disks.a.mountpoint, 'vol0.img')).equals(readFileSync(join(c.disks.b.mountpoint, 'vol0.img')));
  return { outOfSyncBytes: v.outOfSyncBytes, identical };
}

/** Reads through `bad` over the faulty range (the writers only write) until its status shows the disk Failed and the peer serving. */
async function untilFailed(c: PowerCluster, bad: Node, offset: number, ms: number): Promise<{ failed: boolean; readErrors: number }> {
  const reader = await connectWithin(nbdPort(c, bad), 5_000);
  if (!reader) throw new Error(`no NBD connection to ${bad}`);
  let readErrors = 0;
  try {
    const failed = await reached(async () => {
      const read = reader.read(offset, 64 * 1024).catch(() => void readErrors++);
      if (!(await settlesWithin(read, 5_000))) throw new Error(`a read through ${bad} got no answer within 5 s`);
      const [v, p] = [await vol(c, bad), await vol(c, other(bad))];
      return v?.disk === 'Failed' && p?.peerDiskFailed === true;
    }, ms);
    return { failed, readErrors };
  } finally {
    reader.close();
  }
}

/**
 * A disk error at a random moment of another phase's round: the phase goes on around it (and may
 * cut the failing node). Whatever happens, the round's checks hold; the note says what was seen.
 */
async function diskErrorDuring(x: RoundContext, rnd: () => number, done: { now: boolean }): Promise<void> {
  const start = x.load.acked;
  const after = 5 + Math.floor(rnd() * 60);
  await reached(() => done.now || x.load.acked >= start + after, 30_000);
  const up = (['a', 'b'] as const).filter((n) => x.c.nodes[n]);
  if (done.now || up.length === 0) return void x.notes.push('disk error: not injected (the phase was over first, or both nodes were down)');
  const bad = pick(rnd, up);
  try {
    const rule = await injectDiskError(x.c, bad, rnd);
    const { failed } = await untilFailed(x.c, bad, rule.offset, 5_000);
    x.notes.push(`disk error during the phase: ${rule.op} ${rule.errno} at ${rule.offset / MiB} MiB on ${bad} after ${after} writes: disk Failed and peer serving seen: ${failed}`);
  } catch (err) {
    x.notes.push(`disk error: not injected on ${bad}: ${(err as Error).message} (the node went down meanwhile)`);
  }
}

export interface PowerRoundResult {
  round: number;
  phase: string;
  cuts: CutRecord[];
  strict: boolean;
  /** The round's writes: acknowledged, with FUA, made durable by a FLUSH, FLUSHes. */
  writes: { acked: number; fua: number; durableByFlush: number; flushes: number };
  notes: string[];
  problems: string[];
  seconds: number;
}

/**
 * One round aimed at `phase`. `diskErrors`: the chance (0–1) that a disk error also strikes a
 * random node at a random moment of the round (other phases than disk-error). Problems are
 * returned (and counted), not thrown, so the soak goes on.
 */
export async function powerRound(c: PowerCluster, round: number, phase: Phase, rnd: () => number, diskErrors = 0): Promise<PowerRoundResult> {
  const t0 = Date.now();
  const before = { ...c.ledger.totals };
  const x: RoundContext = { c, rnd, load: new Load(c, seededRandom(Math.floor(rnd() * 2 ** 32))), down: new Set(), cuts: [], notes: [], problems: [] };
  // Its own generator too: it draws while the phase does.
  const errorRnd = seededRandom(Math.floor(rnd() * 2 ** 32));
  const phaseDone = { now: false };
  const diskError = phase.name !== 'disk-error' && rnd() < diskErrors ? diskErrorDuring(x, errorRnd, phaseDone) : undefined;
  try {
    await phase.run(x);
  } catch (err) {
    x.problems.push(`phase ${phase.name}: ${(err as Error).message}`);
  } finally {
    phaseDone.now = true;
    await diskError;
    if (!(await x.load.end())) x.problems.push('a client request got no answer within 30 s after the phase (its connection was closed)');
  }
  checkAlive(x);
  // A node whose disk failed, or may fail (its rules still loaded), is restarted on its disk
  // with the rules cleared (the disk repaired).
  for (const n of ['a', 'b'] as const) {
    if (c.nodes[n] && (c.faulty.has(n) || (await vol(c, n))?.disk === 'Failed')) {
      await c.nodes[n]!.stop('SIGKILL');
      c.nodes[n] = null;
      x.down.add(n);
    }
  }
  c.faulty.clear();
  const strict = x.down.size <= 1;
  try {
    await restartDown(c);
    await untilHealthy(c);
    await checkRound(x, strict);
  } catch (err) {
    x.problems.push(`recovery: ${(err as Error).message}`);
  }
  checkHarness(x);
  if (x.problems.length > 0) x.notes.push(`node logs of this round: ${keepLogs(round, t0)}`);
  return { round, phase: phase.name, cuts: x.cuts, strict, writes: delta(before, c.ledger.totals), notes: x.notes, problems: x.problems, seconds: (Date.now() - t0) / 1000 };
}

/** Writes the log lines every node and witness process logged since `since` to a file that is kept; returns its path. */
function keepLogs(round: number, since: number): string {
  const path = join(tmpdir(), `nbd-mirror-power-round-${round}-${since}.log`);
  const lines = startedLogs.flatMap((p) => p.logs.filter((l) => typeof l.time === 'number' && l.time >= since).map((l): Record<string, unknown> => ({ process: p.args.slice(0, 5).join(' '), ...l })));
  lines.sort((x, y) => (x.time as number) - (y.time as number));
  writeFileSync(path, lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  return path;
}

function delta(before: WriteLedger['totals'], after: WriteLedger['totals']): PowerRoundResult['writes'] {
  return { acked: after.acked - before.acked, fua: after.fua - before.fua, durableByFlush: after.durableByFlush - before.durableByFlush, flushes: after.flushes - before.flushes };
}

/** After recovery: verify, byte compare, the ledger through both nodes; then the read-back content is the baseline. */
async function checkRound(x: RoundContext, strict: boolean): Promise<void> {
  const { c } = x;
  const port = adminPort(c, x.rnd() < 0.5 ? 'a' : 'b');
  let v = await verifyVolume(port);
  // A verify that a link loss stopped early compared nothing wrongly (a loaded machine can miss the
  // 1 s heartbeat timeout these pairs run with): healthy again, it runs again.
  for (let tries = 1; v.code === 2 && /verify stopped early: peer link lost/.test(v.stderr) && tries < 3; tries++) {
    x.notes.push(`verify after recovery stopped early (${v.stderr.trim()}): run again`);
    await untilHealthy(c);
    v = await verifyVolume(port);
  }
  if (v.code !== 0 || v.outOfSyncBytes !== 0) x.problems.push(`verify after recovery: exit ${v.code}, ${v.outOfSyncBytes} bytes out of sync ${v.stderr}`);
  const [fa, fb] = [readFileSync(join(c.disks.a.mountpoint, 'vol0.img')), readFileSync(join(c.disks.b.mountpoint, 'vol0.img'))];
  if (!fa.equals(fb)) x.problems.push(`the data files differ: first at byte ${firstDifference(fa, fb)}`);
  let content: Buffer | null = null;
  for (const n of ['a', 'b'] as const) {
    const client = await NbdClient.connect({ port: nbdPort(c, n), exportName: 'vol0' });
    try {
      const parts: Buffer[] = [];
      for (let off = 0; off < SIZE; off += 8 * MiB) parts.push(await client.read(off, 8 * MiB));
      const data = Buffer.concat(parts);
      x.problems.push(...c.ledger.check(data, 0, strict, `node ${n}`));
      content ??= data;
      if (n === 'b') await client.flush(); // durable on both: the baseline of the next round
    } finally {
      client.close();
    }
  }
  c.ledger.rebase(content!, 0);
}

function firstDifference(a: Buffer, b: Buffer): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let off = 0; off < a.length; off += MiB) {
    if (!a.subarray(off, off + MiB).equals(b.subarray(off, off + MiB))) {
      for (let i = off; ; i++) if (a[i] !== b[i]) return i;
    }
  }
  return -1;
}

export function formatPowerRound(r: PowerRoundResult): string {
  const cuts = r.cuts.map((k) => `${k.phase}${k.hit ? '' : ' (missed)'} → ${k.targets.join('+')} [${k.dropped}]`).join(', ') || 'no cut';
  const head = `round ${String(r.round).padStart(3)} ${r.phase.padEnd(15)}: ${cuts}; ${r.writes.acked} writes acked, ${r.strict ? 'every acknowledged' : 'every flushed/FUA'} write checked on both, ${r.seconds.toFixed(1)} s`;
  return [head, ...r.notes.map((n) => `    ${n}`), ...r.problems.map((p) => `    PROBLEM: ${p}`)].join('\n');
}

/**
 * The rounds' problems, each with what repeats it: the seed and the round's line (cuts, notes,
 * the kept node logs) — CI shows an assertion's message even where it cuts the printed rounds.
 */
export function roundProblems(results: readonly PowerRoundResult[], seed: number): string[] {
  return results.filter((r) => r.problems.length > 0).map((r) => `NBD_MIRROR_CHAOS_SEED=${seed} ${formatPowerRound(r)}`);
}

/** The end-of-run summary: rounds, cuts by phase (one node, both, the witness), writes checked, problems. */
export function powerSummary(results: readonly PowerRoundResult[]): string {
  const byPhase = new Map<string, { one: number; both: number; witness: number; witnessAndNode: number; missed: number }>();
  for (const k of results.flatMap((r) => r.cuts)) {
    const e = byPhase.get(k.phase) ?? { one: 0, both: 0, witness: 0, witnessAndNode: 0, missed: 0 };
    if (k.targets.includes('w')) k.targets.length > 1 ? e.witnessAndNode++ : e.witness++;
    else if (k.targets.length === 2) e.both++;
    else e.one++;
    if (!k.hit) e.missed++;
    byPhase.set(k.phase, e);
  }
  const phases = [...byPhase].map(([p, e]) => {
    const parts = [`one node ${e.one}`, `both ${e.both}`, ...(e.witness + e.witnessAndNode > 0 ? [`witness ${e.witness}`, `witness + node ${e.witnessAndNode}`] : []), ...(e.missed > 0 ? [`MISSED ${e.missed}`] : [])];
    return `${p} ${e.one + e.both + e.witness + e.witnessAndNode} (${parts.join(', ')})`;
  });
  const w = results.reduce((t, r) => ({ acked: t.acked + r.writes.acked, fua: t.fua + r.writes.fua, durableByFlush: t.durableByFlush + r.writes.durableByFlush, flushes: t.flushes + r.writes.flushes }), { acked: 0, fua: 0, durableByFlush: 0, flushes: 0 });
  const problems = results.reduce((n, r) => n + r.problems.length, 0);
  return [
    `# power chaos: ${results.length} rounds, ${results.reduce((n, r) => n + r.cuts.length, 0)} cuts; ${results.filter((r) => r.strict).length} rounds kept one node up (every acknowledged write checked), the others every flushed/FUA write`,
    `# cuts by phase: ${phases.join('; ')}`,
    `# writes checked on both nodes after recovery: ${w.acked} acknowledged (${w.fua} with FUA, ${w.durableByFlush} made durable by ${w.flushes} FLUSHes)`,
    `# problems: ${problems}`,
  ].join('\n');
}
