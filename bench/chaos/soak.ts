// Chaos soak for manual runs: the CI chaos test's rounds (test/support/chaos.ts), as many as
// you like. Prints rounds, failures and resynced bytes per round; exits 1 if any round failed.
//   npm run soak [-- --rounds 100] [--seed N] [--witness] [--power] [--pool]
// --power: each node's data on the power-cut filesystem, and every kill is a power cut (unsynced data dropped).
// --pool: the volume is a thin volume in a pool on each node.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chaosRound, formatRound, seededRandom, startChaosCluster, stopChaosCluster } from '../../test/support/chaos.js';

const { values: opts } = parseArgs({ options: { rounds: { type: 'string', default: '50' }, seed: { type: 'string' }, witness: { type: 'boolean', default: false }, power: { type: 'boolean', default: false }, pool: { type: 'boolean', default: false } } });
const withWitness = { witness: opts.witness, power: opts.power, pool: opts.pool };
const rounds = Number(opts.rounds);
const seed = Number(opts.seed ?? Date.now() % 100_000);

async function main(): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-soak-'));
  console.log(`# chaos soak: ${rounds} rounds, seed ${seed}${opts.witness ? ', with a witness' : ''}${opts.power ? ', power cuts' : ''}${opts.pool ? ', thin pool' : ''}, ${new Date().toISOString()}`);
  let failures = 0;
  let cluster = await startChaosCluster(dir, withWitness);
  const rnd = seededRandom(seed);
  try {
    for (let round = 1; round <= rounds; round++) {
      try {
        console.log(formatRound(await chaosRound(cluster, round, rnd)));
      } catch (err) {
        failures++;
        console.log(`round ${String(round).padStart(3)}: FAILED: ${(err as Error).message}`);
        // Start again from a fresh pair so one failure does not hide the next.
        await stopChaosCluster(cluster);
        cluster = await startChaosCluster(mkdtempSync(join(dir, `after-${round}-`)), withWitness);
      }
    }
  } finally {
    await stopChaosCluster(cluster);
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(`# ${rounds} rounds, ${failures} failed`);
  return failures > 0 ? 1 : 0;
}

main().then((code) => process.exit(code));
