// Chaos in CI (bounded): 5 rounds of writes through both nodes, kill -9 of a random node at a
// random instant, restart, automatic resync, verify, and every acknowledged write read back
// through both nodes. Longer runs: `npm run soak -- --rounds 100`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { chaosRound, formatRound, seededRandom, startChaosCluster, stopChaosCluster, type ChaosCluster } from '../support/chaos.js';
import { missingTools } from '../support/tools.js';

const ROUNDS = 5;

describe.skipIf(missingTools('fio').length > 0)('chaos: kill -9 of a random node during writes, 5 rounds', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-chaos-'));
  let cluster: ChaosCluster | undefined;
  afterAll(async () => {
    if (cluster) await stopChaosCluster(cluster);
    rmSync(dir, { recursive: true, force: true });
  });

  it('loses no acknowledged write, ends identical, and resyncs no more than dirty bits + activity log', async () => {
    cluster = await startChaosCluster(dir);
    const seed = Number(process.env.NBD_MIRROR_CHAOS_SEED ?? Date.now() % 100_000);
    const rnd = seededRandom(seed);
    console.log(`chaos seed ${seed} (NBD_MIRROR_CHAOS_SEED=${seed} repeats this run)`);
    for (let round = 1; round <= ROUNDS; round++) {
      const r = await chaosRound(cluster, round, rnd);
      console.log(formatRound(r));
      expect(r.resyncedBytes).toBeLessThanOrEqual(r.boundBytes);
      expect(r.verifyOutOfSyncBytes).toBe(0);
    }
  }, 240_000);
});
