// Chaos soak for manual runs: the CI chaos tests' rounds, as many as you like. Exits 1 if any
// round failed.
//   npm run soak [-- --rounds 100] [--seed N] [--witness] [--pool]   kill -9 rounds (test/support/chaos.ts;
//     --pool: the volume is a thin volume in a pool on each node; --power --pool: every kill a power cut)
//   npm run soak -- --power [--rounds 100] [--seed N] [--phase NAME] [--disk-errors P]
//     power cuts aimed at phases (test/support/power-chaos.ts), the phases in turn (or only NAME);
//     with chance P (default 0.25) a round also gets a disk error at a random moment. Prints each
//     round and a summary (cuts by phase, writes checked, problems).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chaosRound, formatRound, seededRandom, startChaosCluster, stopChaosCluster } from '../../test/support/chaos.js';
import { formatPowerRound, PHASES, powerRound, powerSummary, startPowerCluster, stopPowerCluster, type PowerRoundResult } from '../../test/support/power-chaos.js';

const { values: opts } = parseArgs({
  options: { rounds: { type: 'string', default: '50' }, seed: { type: 'string' }, witness: { type: 'boolean', default: false }, power: { type: 'boolean', default: false }, pool: { type: 'boolean', default: false }, phase: { type: 'string' }, 'disk-errors': { type: 'string', default: '0.25' } },
});
const rounds = Number(opts.rounds);
const seed = Number(opts.seed ?? Date.now() % 100_000);

async function killRounds(dir: string): Promise<number> {
  let failures = 0;
  const kind = { witness: opts.witness, power: opts.power, pool: opts.pool };
  let cluster = await startChaosCluster(dir, kind);
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
        cluster = await startChaosCluster(mkdtempSync(join(dir, `after-${round}-`)), kind);
      }
    }
  } finally {
    await stopChaosCluster(cluster);
  }
  console.log(`# ${rounds} rounds, ${failures} failed`);
  return failures;
}

async function powerRounds(dir: string): Promise<number> {
  const phases = opts.phase === undefined ? PHASES : PHASES.filter((p) => p.name === opts.phase);
  if (phases.length === 0) throw new Error(`--phase: one of ${PHASES.map((p) => p.name).join(', ')}`);
  let cluster = await startPowerCluster(mkdtempSync(join(dir, 'c-')));
  const rnd = seededRandom(seed);
  const results: PowerRoundResult[] = [];
  try {
    for (let round = 1; round <= rounds; round++) {
      const r = await powerRound(cluster, round, phases[(round - 1) % phases.length]!, rnd, Number(opts['disk-errors']));
      console.log(formatPowerRound(r));
      results.push(r);
      if (r.problems.length > 0) {
        // Start again from a fresh pair so one failure does not hide the next.
        await stopPowerCluster(cluster);
        cluster = await startPowerCluster(mkdtempSync(join(dir, `after-${round}-`)));
      }
    }
  } finally {
    console.log(powerSummary(results));
    await stopPowerCluster(cluster);
  }
  return results.filter((r) => r.problems.length > 0).length;
}

async function main(): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-soak-'));
  // Power cuts aimed at phases need no pool; with --pool the kill rounds cut the power instead (the pool has no phase list yet).
  const phased = opts.power && !opts.pool;
  console.log(`# chaos soak: ${rounds} rounds, seed ${seed}${opts.witness ? ', with a witness' : ''}${phased ? ', power cuts aimed at phases' : opts.power ? ', power cuts' : ''}${opts.pool ? ', thin pool' : ''}, ${new Date().toISOString()}`);
  try {
    return (await (phased ? powerRounds(dir) : killRounds(dir))) > 0 ? 1 : 0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then((code) => process.exit(code));
