// A failed test prints the last log lines of every nbd-mirror process it started: a pair that
// never connected, or a node that refused something, says why in the CI output. And no process
// outlives its test file: a node left running by a failed test kept dialing its old peer port,
// which a later test's node then listened on — it linked with the stranger (same node names, no
// keys) and refused its real peer.
import { afterAll, beforeEach } from 'vitest';
import { startedLogs } from './processes.js';

const LINES = 30;

beforeEach((ctx) => {
  const from = startedLogs.length;
  ctx.onTestFailed(() => {
    for (const { args, logs } of startedLogs.slice(from)) {
      console.error(`--- nbd-mirror ${args.join(' ')}: last ${Math.min(LINES, logs.length)} of ${logs.length} log lines`);
      for (const l of logs.slice(-LINES)) console.error(JSON.stringify(l));
    }
  });
});

afterAll(() => {
  for (const { proc } of startedLogs) if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
});
