// Shared pieces of the real-process cluster tests: config files, admin status, polling.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fetchStatus } from '../../src/admin/admin-client.js';
import type { VolumeStatus } from '../../src/replication/cluster-node.js';
import { freePort, startClusterNode, startWitnessProcess, type RunningServer } from './processes.js';
import type { AttachStatus } from '../../src/attach/attach.js';
import type { AttachVolumeStatus } from '../../src/attach/attach-volume.js';
import { httpRequest } from '../../src/net/http-request.js';

export interface PairPorts {
  nbdA: number;
  nbdB: number;
  peerA: number;
  peerB: number;
  adminA: number;
  adminB: number;
}

export async function pairPorts(): Promise<PairPorts> {
  const [nbdA, nbdB, peerA, peerB, adminA, adminB] = (await Promise.all(Array.from({ length: 6 }, () => freePort()))) as number[];
  return { nbdA: nbdA!, nbdB: nbdB!, peerA: peerA!, peerB: peerB!, adminA: adminA!, adminB: adminB! };
}

/**
 * Writes a two-node config with one volume `vol0`; `bPeer` lets a reach b through a proxy;
 * `extra` adds top-level settings (activityLog, resync, link), volume settings (`volume`) and
 * per-node settings (`nodeA`, `nodeB`: e.g. tls).
 */
export function writePairConfig(
  path: string,
  p: PairPorts,
  size: string,
  bPeer = p.peerB,
  extra: { volume?: Record<string, unknown>; nodeA?: Record<string, unknown>; nodeB?: Record<string, unknown>; [key: string]: unknown } = {},
): string {
  const { volume, nodeA, nodeB, ...top } = extra;
  writeFileSync(
    path,
    JSON.stringify({
      nodes: {
        a: { nbd: `127.0.0.1:${p.nbdA}`, peer: `127.0.0.1:${p.peerA}`, admin: `127.0.0.1:${p.adminA}`, dataDir: 'a', ...nodeA },
        b: { nbd: `127.0.0.1:${p.nbdB}`, peer: `127.0.0.1:${bPeer}`, admin: `127.0.0.1:${p.adminB}`, dataDir: 'b', ...nodeB },
      },
      volumes: { vol0: { size, ...volume } },
      ...top,
    }),
  );
  return path;
}

export function dataFile(dir: string, node: 'a' | 'b'): string {
  return join(dir, node, 'vol0.img');
}

export async function volumeStatus(adminPort: number): Promise<VolumeStatus> {
  return (await fetchStatus({ host: '127.0.0.1', port: adminPort })).volumes.vol0!;
}

/** The witness's grants (GET /status): cluster id → holder. */
export async function witnessGrants(witnessPort: number): Promise<Record<string, { holder: string }>> {
  const res = await fetch(`http://127.0.0.1:${witnessPort}/status`);
  return ((await res.json()) as { grants: Record<string, { holder: string }> }).grants;
}

/** A node's fault rules (the test-only `serve --test-faults FILE`) become `spec`: written, SIGUSR2, waited for until loaded. */
export async function loadFaults(node: RunningServer, file: string, spec: unknown): Promise<void> {
  const loaded = () => node.logs.filter((l) => l.component === 'faults' && l.msg === 'fault rules loaded').length;
  const before = loaded();
  writeFileSync(file, JSON.stringify(spec));
  node.proc.kill('SIGUSR2');
  await until(() => loaded() > before, 10_000);
}

/** Polls until `cond` holds (every 50 ms, at most `ms`). */
export async function until(cond: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  for (const end = Date.now() + ms; !(await cond()); ) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `nbd-mirror attach`'s status of a volume (its GET /status, what `nbd-mirror status --attach` prints). */
export async function attachStatus(adminPort: number, volume = 'vol0'): Promise<AttachVolumeStatus> {
  const res = await httpRequest({ host: '127.0.0.1', port: adminPort }, 'GET', '/status', { timeoutMs: 5000 });
  return (JSON.parse(res.body) as AttachStatus).volumes[volume]!;
}

/** Both nodes connected, UpToDate, nothing to resync on either side. */
export async function pairInSync(p: PairPorts): Promise<boolean> {
  const [sa, sb] = [await volumeStatus(p.adminA), await volumeStatus(p.adminB)];
  return sa.connection === 'Connected' && sb.connection === 'Connected' && sa.disk === 'UpToDate' && sb.disk === 'UpToDate' && sa.outOfSyncBytes === 0 && sb.outOfSyncBytes === 0 && sa.resync === null && sb.resync === null;
}

export interface StartedPair {
  p: PairPorts;
  config: string;
  a: RunningServer;
  b: RunningServer;
}

/**
 * A pair in `dir` (config `dir/cluster.json`, data in `dir/a`, `dir/b`), with a witness unless
 * `witness` is false, started and in sync. Every process it starts goes into `procs` (cleanup).
 */
export async function startPair(dir: string, size: string, procs: RunningServer[], extra: Parameters<typeof writePairConfig>[4] & { witness?: false } = {}): Promise<StartedPair> {
  const p = await pairPorts();
  const { witness: noWitness, ...rest } = extra;
  let witness: string | undefined;
  if (noWitness !== false) {
    const w = await startWitnessProcess(join(dir, 'witness.json'));
    procs.push(w);
    witness = `127.0.0.1:${w.port}`;
  }
  const config = writePairConfig(join(dir, 'cluster.json'), p, size, p.peerB, { ...(witness && { witness }), ...rest });
  const a = await startClusterNode(config, 'a');
  const b = await startClusterNode(config, 'b');
  procs.push(a, b);
  await until(() => pairInSync(p), 30_000);
  return { p, config, a, b };
}

