// Shrinks a failing session to fewer steps (delta debugging, Zeller's ddmin) by replaying
// candidates on a real server, restarted whenever one dies. Used by `run.ts --minimize`.
// A candidate "reproduces" when it fails the same way: the same crash signature, an
// error-level log line, or (stall) a health check that times out while the socket is held.
import { describeSession, type Session, type Step } from './nbd-cases.js';
import { crashSignature, FuzzFailure, healthProbe, play, ProcessWatch } from './nbd-fuzz-runner.js';
import type { StartedTarget } from './targets.js';

export interface MinimizeOptions {
  /** Give up after this long (default 120 s) or this many replays (default 200). */
  readonly budgetMs?: number;
  readonly maxAttempts?: number;
  readonly sessionMs?: number;
  readonly healthMs?: number;
  readonly print?: (line: string) => void;
}

export async function minimizeFailure(f: FuzzFailure, start: () => Promise<StartedTarget>, o: MinimizeOptions = {}): Promise<Session | undefined> {
  const print = o.print ?? ((l: string) => console.log(l));
  const original = f.failedSession;
  if (!original) return undefined;
  const deadline = Date.now() + (o.budgetMs ?? 120_000);
  const maxAttempts = o.maxAttempts ?? 200;
  const sessionMs = o.sessionMs ?? 3000;
  const healthMs = o.healthMs ?? 2000;
  let current: { t: StartedTarget; watches: ProcessWatch[] } | undefined;
  let attempts = 0;

  const target = async () => {
    if (current && current.watches.some((w) => w.dead())) {
      await current.t.cleanup();
      current = undefined;
    }
    if (!current) {
      const t = await start();
      current = { t, watches: t.target.processes.map((p) => new ProcessWatch(p.name, p.server)) };
    }
    return current;
  };

  const reproduces = async (s: Session): Promise<boolean> => {
    attempts++;
    const { t, watches } = await target();
    for (const w of watches) w.newErrors();
    const out = await play(t.target.port, s, sessionMs);
    let stalled = false;
    if (f.kind === 'stall' || f.kind === 'unresponsive' || f.kind === 'health') {
      const r = await healthProbe(t.target, f.ctx.reserved.start, Buffer.alloc(4096, 0x6d), healthMs);
      stalled = r !== 'ok';
    }
    await out.held;
    await new Promise((r) => setTimeout(r, 250));
    for (const w of watches) {
      if (w.dead()) {
        await w.settle();
        if (f.kind === 'died') return `died: ${crashSignature(w.stderrTail(20_000))}` === f.signature;
        return f.kind !== 'errorLog';
      }
      if (f.kind === 'errorLog' && w.newErrors().length > 0) return true;
    }
    return stalled;
  };

  const withSteps = (steps: Step[]): Session => ({ ...original, steps });
  const budgetLeft = () => attempts < maxAttempts && Date.now() < deadline;

  try {
    if (!(await reproduces(original))) {
      print(`minimize: session #${original.index} alone does not fail the same way (it needs earlier sessions, or timing); not minimized`);
      return undefined;
    }
    // ddmin over the steps.
    let steps = original.steps;
    let n = 2;
    while (steps.length >= 2 && budgetLeft()) {
      const size = Math.ceil(steps.length / n);
      let reduced = false;
      for (let i = 0; i < n && budgetLeft(); i++) {
        const complement = [...steps.slice(0, i * size), ...steps.slice((i + 1) * size)];
        if (complement.length === steps.length || complement.length === 0) continue;
        if (await reproduces(withSteps(complement))) {
          steps = complement;
          n = Math.max(n - 1, 2);
          reduced = true;
          break;
        }
      }
      if (!reduced) {
        if (n >= steps.length) break;
        n = Math.min(n * 2, steps.length);
      }
    }
    // Then smaller bursts, no splits, no pauses.
    for (let i = 0; i < steps.length && budgetLeft(); i++) {
      const st = steps[i]!;
      if ((st.kind === 'requests' || st.kind === 'options') && st.count > 1) {
        for (let count = Math.floor(st.count / 2); count >= 1 && budgetLeft(); count = Math.floor(count / 2)) {
          const cand = steps.slice();
          cand[i] = { ...st, count } as Step;
          if (!(await reproduces(withSteps(cand)))) break;
          steps = cand;
        }
      }
      const cur = steps[i]!;
      if ('split' in cur && cur.split && budgetLeft()) {
        const cand = steps.slice();
        const { split: _split, ...rest } = cur;
        cand[i] = rest as Step;
        if (await reproduces(withSteps(cand))) steps = cand;
      }
    }
    const min = withSteps(steps);
    print(`minimized in ${attempts} replays: ${original.steps.length} → ${steps.length} steps\n${describeSession(min)}`);
    return min;
  } finally {
    await current?.t.cleanup();
  }
}
