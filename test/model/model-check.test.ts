// The Promela model of the replication protocol (model/README.md), checked exhaustively by spin:
// no invariant violated, and each mutant (a rule taken out) caught. Its summary is printed.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { missingTools, toolEnv } from '../support/tools.js';

const script = fileURLToPath(new URL('../../model/check.sh', import.meta.url));

describe.skipIf(missingTools('spin', 'gcc').length > 0)('replication protocol model (spin)', () => {
  it('holds every invariant in every interleaving, and catches every mutant', () => {
    const run = spawnSync('bash', [script], { encoding: 'utf8', env: toolEnv(), timeout: 420_000 });
    console.log(run.stderr);
    expect(run.status).toBe(0);
    expect(run.stderr).toMatch(/model \(writes 4, faults 3\): \d+ states, 0 errors/);
    expect(run.stderr).not.toMatch(/^open:/m); // no known gap left
    expect(run.stderr.match(/^mutant \w+: \d+ states, [1-9]\d* errors/gm)).toHaveLength(9);
  }, 480_000);
});
