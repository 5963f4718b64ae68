// Long fuzz runs against a real server process:
//   npm run fuzz -- --seconds 600 [--seed S] [--mirrored]
//   tsx test/fuzz/run.ts --seed S --sessions N      replay the first N sessions of a run
//   tsx test/fuzz/run.ts --seed S --session I       replay session I alone (comma-separated list allowed)
// Options: --health-every K (default 8), --session-ms MS (3000), --health-ms MS (2000),
// --allow-error-logs (do not fail on error-level server log lines), --keep-going (after a
// failure, start a fresh server and go on with the next session; prints every failure),
// --minimize (shrink each distinct failing session by replaying it alone on fresh servers).
// Needs build/ (npm run build:ts). Exits 1 when the fuzzer found a failure.
import { minimizeFailure } from './minimize.js';
import { formatStats, FuzzFailure, runFuzz, type FuzzStats } from './nbd-fuzz-runner.js';
import { startTarget } from './targets.js';

function parseArgs(argv: string[]): Map<string, string | true> {
  const out = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const [k, v] = a.slice(2).split('=', 2) as [string, string | undefined];
    if (v !== undefined) out.set(k, v);
    else if (argv[i + 1] !== undefined && !argv[i + 1]!.startsWith('--')) out.set(k, argv[++i]!);
    else out.set(k, true);
  }
  return out;
}

function num(args: Map<string, string | true>, key: string): number | undefined {
  const v = args.get(key);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v === true || !Number.isFinite(n)) throw new Error(`--${key} needs a number`);
  return n;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const known = ['seconds', 'sessions', 'seed', 'session', 'mirrored', 'health-every', 'session-ms', 'health-ms', 'allow-error-logs', 'keep-going', 'size', 'minimize'];
  for (const k of args.keys()) if (!known.includes(k)) throw new Error(`unknown option --${k} (known: ${known.map((x) => `--${x}`).join(' ')})`);
  const seed = (num(args, 'seed') ?? Math.floor(Math.random() * 2 ** 32)) >>> 0;
  const only = typeof args.get('session') === 'string' ? (args.get('session') as string).split(',').map((x) => Number(x)) : undefined;
  const sessions = num(args, 'sessions');
  const seconds = num(args, 'seconds') ?? (only || sessions !== undefined ? undefined : 60);
  const mirrored = args.has('mirrored');
  const keepGoing = args.has('keep-going');
  const size = typeof args.get('size') === 'string' ? (args.get('size') as string) : '64M';
  console.log(`nbd fuzz: seed ${seed}${seconds !== undefined ? `, ${seconds} s` : ''}${sessions !== undefined ? `, ${sessions} sessions` : ''}${only ? `, sessions ${only.join(',')}` : ''}, ${mirrored ? 'mirrored pair' : 'standalone'}`);

  const total: FuzzStats = { seed, sessions: 0, steps: 0, bytesSent: 0, bytesReceived: 0, healthChecks: 0, seconds: 0, shapes: {}, ends: {} };
  const failures: FuzzFailure[] = [];
  const started = Date.now();
  let from = 0;
  for (;;) {
    const t = await startTarget(mirrored ? 'mirrored' : 'standalone', size);
    console.log(`target: ${t.description}`);
    const left = seconds !== undefined ? seconds - (Date.now() - started) / 1000 : undefined;
    const remainingOnly = only ? only.filter((i) => i >= from) : undefined;
    let stats: FuzzStats | undefined;
    let done = false;
    try {
      stats = await runFuzz(t.target, {
        seed,
        ...(left !== undefined ? { seconds: Math.max(1, left) } : {}),
        ...(sessions !== undefined ? { sessions: sessions - from } : {}),
        ...(remainingOnly ? { only: remainingOnly } : { first: from }),
        healthEvery: num(args, 'health-every'),
        sessionMs: num(args, 'session-ms'),
        healthMs: num(args, 'health-ms'),
        failOnErrorLog: !args.has('allow-error-logs'),
        print: (l) => console.log(l),
      });
      done = true;
    } catch (err) {
      if (!(err instanceof FuzzFailure)) throw err;
      failures.push(err);
      stats = err.stats;
      from = err.session + 1;
    } finally {
      await t.cleanup();
    }
    if (stats) {
      for (const k of ['sessions', 'steps', 'bytesSent', 'bytesReceived', 'healthChecks'] as const) total[k] += stats[k];
      for (const [k, v] of Object.entries(stats.shapes)) total.shapes[k] = (total.shapes[k] ?? 0) + v;
      for (const [k, v] of Object.entries(stats.ends)) total.ends[k] = (total.ends[k] ?? 0) + v;
    }
    if (done || !keepGoing || (seconds !== undefined && Date.now() - started > seconds * 1000)) break;
    if (sessions !== undefined && from >= sessions) break;
    if (remainingOnly && !remainingOnly.some((i) => i >= from)) break;
    console.log(`--keep-going: a fresh server, going on from session #${from}`);
  }
  total.seconds = (Date.now() - started) / 1000;
  console.log('\n' + formatStats(total));
  if (failures.length) {
    const distinct = new Map<string, FuzzFailure[]>();
    for (const f of failures) distinct.set(f.signature, [...(distinct.get(f.signature) ?? []), f]);
    console.log(`\n${failures.length} failure(s), ${distinct.size} distinct:`);
    for (const [sig, fs] of distinct) console.log(`  ${fs.length}× ${sig}\n     first: seed ${seed} session #${fs[0]!.session}; sessions ${fs.map((f) => f.session).join(', ')}`);
    if (args.has('minimize')) {
      for (const [sig, fs] of distinct) {
        console.log(`\nminimizing ${sig} (seed ${seed} session #${fs[0]!.session})`);
        await minimizeFailure(fs[0]!, () => startTarget(mirrored ? 'mirrored' : 'standalone', size));
      }
    }
    return 1;
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(2);
  },
);
