// Thin pools under power cuts: the chaos rounds of power-chaos.test.ts (writes through both
// nodes, a power cut of a random node at a random instant — kill -9 and everything it never
// synced dropped, all of it or sectors torn at random — restart, resync, verify, every
// acknowledged write read back) with each node's volume a thin volume in a pool on the
// power-cut filesystem; after every round `nbd-mirror pool check` finds 0 problems on both.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { chaosRound, formatRound, seededRandom, startChaosCluster, stopChaosCluster, type ChaosCluster } from '../support/chaos.js';
import { run } from '../support/fixture.js';
import { cliPath } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

describe.skipIf(missingTools('fio', 'fusermount3').length > 0)('chaos: power cuts of a node whose volume is thin', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-thin-power-'));
  const clusters: ChaosCluster[] = [];
  afterAll(async () => {
    for (const c of clusters) await stopChaosCluster(c);
    rmSync(dir, { recursive: true, force: true });
  });

  it('3 rounds: no acknowledged write lost, copies identical, pool check 0 problems on both nodes', async () => {
    const cluster = await startChaosCluster(mkdtempSync(join(dir, 'c-')), { power: true, pool: true });
    clusters.push(cluster);
    const seed = Number(process.env.NBD_MIRROR_CHAOS_SEED ?? Date.now() % 100_000);
    const rnd = seededRandom(seed);
    console.log(`thin power chaos seed ${seed} (NBD_MIRROR_CHAOS_SEED=${seed} repeats this run)`);
    for (let round = 1; round <= 3; round++) {
      const r = await chaosRound(cluster, round, rnd);
      console.log(formatRound(r));
      expect(r.verifyOutOfSyncBytes).toBe(0);
      for (const n of ['a', 'b'] as const) {
        const report = JSON.parse(await run(process.execPath, [cliPath, 'pool', 'check', '--json', join(cluster.power![n].mountpoint, 'pool.img')])) as { problems: string[]; mappedUnits: number };
        expect(report.problems).toEqual([]);
        expect(report.mappedUnits).toBeGreaterThan(0);
      }
    }
  }, 300_000);
});
