// Shared pieces of the real-process cluster tests: config files, admin status, polling.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fetchStatus } from '../../src/admin/admin-client.js';
import type { VolumeStatus } from '../../src/replication/cluster-node.js';
import { freePort } from './processes.js';
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

/** Polls until `cond` holds (every 50 ms, at most `ms`). */
export async function until(cond: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  for (const end = Date.now() + ms; !(await cond()); ) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `nbd-mirror attach`'s status of vol0 (its GET /status, what `nbd-mirror status --attach` prints). */
export async function attachStatus(adminPort: number): Promise<AttachVolumeStatus> {
  const res = await httpRequest({ host: '127.0.0.1', port: adminPort }, 'GET', '/status', { timeoutMs: 5000 });
  return (JSON.parse(res.body) as AttachStatus).volumes.vol0!;
}
