// Chaos in CI (bounded): 5 rounds of writes through both nodes, kill -9 of a random node at a
// random instant, restart, automatic resync, verify, and every acknowledged write read back
// through both nodes; then 3 more rounds with a witness (the survivor writes on its grant).
// Longer runs: `npm run soak -- --rounds 100 [--witness]`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { chaosRound, formatRound, seededRandom, startChaosCluster, stopChaosCluster, type ChaosCluster } from '../support/chaos.js';
import { missingTools } from '../support/tools.js';

describe.skipIf(missingTools('fio').length > 0)('chaos: kill -9 of a random node during writes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-chaos-'));
  const clusters: ChaosCluster[] = [];
  afterAll(async () => {
    for (const c of clusters) await stopChaosCluster(c);
    rmSync(dir, { recursive: true, force: true });
  });

  for (const [rounds, witness] of [[5, false], [3, true]] as const) {
    it(`${rounds} rounds${witness ? ' with a witness' : ''}: loses no acknowledged write, ends identical, resyncs no more than dirty bits + activity log`, async () => {
      const cluster = await startChaosCluster(mkdtempSync(join(dir, 'c-')), { witness });
      clusters.push(cluster);
      const seed = Number(process.env.NBD_MIRROR_CHAOS_SEED ?? Date.now() % 100_000);
      const rnd = seededRandom(seed);
      console.log(`chaos seed ${seed} (NBD_MIRROR_CHAOS_SEED=${seed} repeats this run)${witness ? ', with a witness' : ''}`);
      for (let round = 1; round <= rounds; round++) {
        const r = await chaosRound(cluster, round, rnd);
        console.log(formatRound(r));
        expect(r.resyncedBytes).toBeLessThanOrEqual(r.boundBytes);
        expect(r.verifyOutOfSyncBytes).toBe(0);
      }
    }, 240_000);
  }
});
