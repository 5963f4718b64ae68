// Bounded structure-aware fuzzing of the NBD handshake and transmission phases against real
// server processes (issue 11 item 6): ~20 s against a standalone server, ~10 s against a node of
// a mirrored pair. Seeded: FUZZ_SEED=S replays a run (the seed is printed either way);
// FUZZ_SECONDS scales both runs. Long runs: `npm run fuzz -- --seconds N`.
import { afterAll, describe, expect, it } from 'vitest';
import { formatStats, runFuzz } from './nbd-fuzz-runner.js';
import { startTarget, type StartedTarget } from './targets.js';
import type { ServeMode } from '../support/fixture.js';

const seed = (process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : Math.floor(Math.random() * 2 ** 32)) >>> 0;
const scale = process.env.FUZZ_SECONDS !== undefined ? Number(process.env.FUZZ_SECONDS) / 20 : 1;
const runs: Array<{ mode: ServeMode; seconds: number; what: string }> = [
  { mode: 'standalone', seconds: 20 * scale, what: 'a standalone server leave it serving' },
  { mode: 'mirrored', seconds: 10 * scale, what: 'a node of a mirrored pair leave both nodes serving the same bytes' },
];
console.log(`nbd fuzz seed ${seed} (replay: FUZZ_SEED=${seed} npx vitest run test/fuzz/nbd-fuzz.test.ts)`);

describe('nbd fuzz', () => {
  const started: StartedTarget[] = [];
  afterAll(async () => {
    for (const t of started) await t.cleanup();
  });

  for (const run of runs) {
    it(
      `hostile sessions against ${run.what} (seed ${seed})`,
      async () => {
        const t = await startTarget(run.mode);
        started.push(t);
        const stats = await runFuzz(t.target, { seed, seconds: run.seconds });
        console.log(`${run.mode} (${t.description})\n${formatStats(stats)}`);
        expect(stats.sessions).toBeGreaterThan(0);
      },
      (run.seconds + 90) * 1000,
    );
  }
});
