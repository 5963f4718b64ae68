// Power-cut chaos in CI (bounded): each node's data directory on the power-cut filesystem
// (test/support/powercut/), writes through both nodes, then a power cut of a random node at a
// random instant — kill -9 and everything it never synced dropped (all of it, or sectors torn at
// random) — restart, automatic recovery and resync, verify, every acknowledged write read back
// through both nodes. Longer runs: `npm run soak -- --power --rounds 100`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { chaosRound, formatRound, seededRandom, startChaosCluster, stopChaosCluster, type ChaosCluster } from '../support/chaos.js';
import { missingTools } from '../support/tools.js';

describe.skipIf(missingTools('fio', 'fusermount3').length > 0)('chaos: power cut of a random node during writes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-power-'));
  const clusters: ChaosCluster[] = [];
  afterAll(async () => {
    for (const c of clusters) await stopChaosCluster(c);
    rmSync(dir, { recursive: true, force: true });
  });

  it('4 rounds: loses no acknowledged write, ends identical, resyncs no more than dirty bits + activity log', async () => {
    const cluster = await startChaosCluster(mkdtempSync(join(dir, 'c-')), { power: true });
    clusters.push(cluster);
    const seed = Number(process.env.NBD_MIRROR_CHAOS_SEED ?? Date.now() % 100_000);
    const rnd = seededRandom(seed);
    console.log(`power chaos seed ${seed} (NBD_MIRROR_CHAOS_SEED=${seed} repeats this run)`);
    for (let round = 1; round <= 4; round++) {
      const r = await chaosRound(cluster, round, rnd);
      console.log(formatRound(r));
      expect(r.cut?.sectors).toBeGreaterThanOrEqual(0);
      expect(r.verifyOutOfSyncBytes).toBe(0);
    }
  }, 300_000);
});
