// `nbd-mirror verify`: starts an online verify on a node (POST /verify), shows its progress from
// GET /status, and reports the out-of-sync ranges; with --repair --source NODE it then waits
// for the resync that copies them from NODE.
//
// Exit codes: 0 both copies identical (or repaired); 1 ranges differ (not repaired); 2 error.
import { formatSize } from '../config/units.js';
import type { VerifyStatus } from '../replication/cluster-node.js';
import { fetchStatus, postAction, type AdminTarget } from './admin-client.js';

export interface VerifyOptions {
  admin: AdminTarget;
  volume: string;
  repair?: boolean;
  source?: string;
  json?: boolean;
  /** Status polling interval (ms). */
  pollMs?: number;
}

/** Everything a script needs, printed with --json. */
export interface VerifyResult {
  node: string;
  volume: string;
  outOfSyncBytes: number;
  ranges: Array<{ offset: number; length: number }>;
  totalBytes: number;
  unverifiedBytes: number;
  rechecks: number;
  /** Bytes of the verifying node's copy that were holes (thin volume): compared without reading. */
  holeBytes: number;
  /** Bytes that were holes on both nodes: verified from the allocation maps alone (no digests). */
  skippedHoleBytes: number;
  seconds: number;
  repaired: boolean;
  repairSource: string | null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runVerify(o: VerifyOptions, out: (text: string) => void = (t) => process.stdout.write(t), progress: (text: string) => void = (t) => process.stderr.write(t)): Promise<number> {
  if (o.repair && !o.source) throw new Error('--repair needs --source NODE: the node whose copy is right');
  if (o.source && !o.repair) throw new Error('--source only goes with --repair');
  const answer = await postAction(o.admin, '/verify', { volume: o.volume, ...(o.repair ? { source: o.source! } : {}) });
  if (!o.json) progress(`${answer}\n`);
  const poll = o.pollMs ?? 250;
  let node = '';
  let v: VerifyStatus | null = null;
  for (;;) {
    const s = await fetchStatus(o.admin.addr);
    node = s.node;
    v = s.volumes[o.volume]?.verify ?? null;
    if (!v) throw new Error(`node ${node} reports no verify of ${o.volume}`);
    if (!v.running) break;
    if (!o.json && process.stderr.isTTY) progress(`\r${o.volume}: ${formatSize(v.doneBytes)} / ${formatSize(v.totalBytes)} (${((100 * v.doneBytes) / v.totalBytes).toFixed(0)} %), out of sync ${formatSize(v.outOfSyncBytes)}   `);
    await sleep(poll);
  }
  if (!o.json && process.stderr.isTTY) progress('\n');
  if (v.error) throw new Error(`verify stopped early: ${v.error} (found so far: ${formatSize(v.outOfSyncBytes)} out of sync)`);
  let repaired = false;
  if (o.repair && v.outOfSyncBytes > 0) {
    // The resync starts when the verify ends; wait until nothing is out of sync any more.
    for (;;) {
      const s = (await fetchStatus(o.admin.addr)).volumes[o.volume]!;
      if (s.connection !== 'Connected') throw new Error(`the peer link went down during the repair (${s.connection}); it finishes on reconnect`);
      if (s.resync === null && s.outOfSyncBytes === 0 && s.disk === 'UpToDate') break;
      await sleep(poll);
    }
    repaired = true;
  }
  const result: VerifyResult = {
    node,
    volume: o.volume,
    outOfSyncBytes: v.outOfSyncBytes,
    ranges: v.ranges,
    totalBytes: v.totalBytes,
    unverifiedBytes: v.unverifiedBytes,
    rechecks: v.rechecks,
    holeBytes: v.holeBytes,
    skippedHoleBytes: v.skippedHoleBytes,
    seconds: v.seconds,
    repaired,
    repairSource: v.repairSource,
  };
  out(o.json ? `${JSON.stringify(result, null, 2)}\n` : describe(result));
  return result.outOfSyncBytes === 0 || repaired ? 0 : 1;
}

function describe(r: VerifyResult): string {
  const lines = [`${r.volume}: verified ${formatSize(r.totalBytes)} on node ${r.node} against its peer in ${r.seconds.toFixed(1)} s`];
  if (r.skippedHoleBytes > 0) lines.push(`  ${formatSize(r.skippedHoleBytes)} of it holes on both nodes (not compared block by block)`);
  if (r.outOfSyncBytes === 0) lines.push('  both copies are identical');
  else {
    lines.push(`  ${formatSize(r.outOfSyncBytes)} out of sync in ${r.ranges.length} range(s), marked out of sync on both nodes:`);
    for (const x of r.ranges.slice(0, 20)) lines.push(`    offset ${x.offset} (${formatSize(x.offset)}), length ${x.length} (${formatSize(x.length)})`);
    if (r.ranges.length > 20) lines.push(`    … ${r.ranges.length - 20} more (--json lists all)`);
    lines.push(r.repaired ? `  repaired: copied from ${r.repairSource}` : '  not repaired: run again with --repair --source NODE (the node whose copy is right)');
  }
  if (r.unverifiedBytes > 0) lines.push(`  ${formatSize(r.unverifiedBytes)} could not be compared (written continuously); verify again later`);
  return `${lines.join('\n')}\n`;
}
