// Runs generated hostile sessions (nbd-cases.ts) against a real server on 127.0.0.1, one raw
// socket each, every session bounded in time; every K sessions a health check: a fresh client
// writes a 4 KiB pattern, reads it back (on the peer too when mirrored), and the server process
// must still be alive. On a failure: the seed, the session index and the steps, then a throw.
import net from 'node:net';
import type { ChildProcess } from 'node:child_process';
import type { RunningServer } from '../support/processes.js';
import { NbdClient } from '../support/nbd-client.js';
import { describeSession, encodeStep, generateSession, mixSeed, Rng, type CaseContext, type Session } from './nbd-cases.js';

/** The server under test, and how to tell it is alive and what it said. */
export interface FuzzTarget {
  readonly port: number;
  readonly exportName: string;
  /** The processes that must stay alive (a mirrored pair: both nodes). */
  readonly processes: ReadonlyArray<{ name: string; server: RunningServer }>;
  /** Ports a health check reads the pattern back from as well (the peer node of a mirrored pair). */
  readonly mirrorPorts?: readonly number[];
}

export interface FuzzOptions {
  readonly seed: number;
  /** Stop after this many sessions… */
  readonly sessions?: number;
  /** …or after this many seconds (whichever comes first; at least one of them). */
  readonly seconds?: number;
  /** Only these session indexes (replay). */
  readonly only?: readonly number[];
  /** The first session index (default 0): a run goes on from there. */
  readonly first?: number;
  /** A health check every this many sessions (default 8). */
  readonly healthEvery?: number;
  /** A session's socket is destroyed after this long (default 3000 ms). */
  readonly sessionMs?: number;
  /** A health check must finish within this (default 2000 ms; held sockets stay open 1.5–3 s). */
  readonly healthMs?: number;
  /** Sockets kept open unread in the background at once (default 4). */
  readonly maxHeld?: number;
  /** Treat error-level server log lines ("internal error while handling a request") as failures (default true). */
  readonly failOnErrorLog?: boolean;
  readonly print?: (line: string) => void;
}

export interface FuzzStats {
  seed: number;
  sessions: number;
  steps: number;
  bytesSent: number;
  bytesReceived: number;
  healthChecks: number;
  seconds: number;
  shapes: Record<string, number>;
  ends: Record<string, number>;
}

export type FailureKind = 'died' | 'errorLog' | 'stall' | 'unresponsive' | 'health';

export class FuzzFailure extends Error {
  constructor(
    message: string,
    readonly kind: FailureKind,
    /** One line that tells distinct failures apart (the error and the first frame of our code). */
    readonly signature: string,
    readonly seed: number,
    readonly session: number,
    /** What ran up to the failure. */
    readonly stats: FuzzStats,
    /** The session that was running (and its generation context, to replay or minimize it). */
    readonly failedSession: Session | undefined,
    readonly ctx: CaseContext,
  ) {
    super(message);
    this.name = 'FuzzFailure';
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Watches a server process: its stderr after start, its error-level log lines. */
export class ProcessWatch {
  private stderr = '';
  private logCursor = 0;
  constructor(
    readonly name: string,
    readonly server: RunningServer,
  ) {
    server.proc.stderr?.on('data', (d: Buffer) => {
      this.stderr += d.toString();
      if (this.stderr.length > 200_000) this.stderr = this.stderr.slice(-100_000);
    });
  }
  get proc(): ChildProcess {
    return this.server.proc;
  }
  dead(): string | undefined {
    const p = this.proc;
    if (p.exitCode !== null || p.signalCode !== null) return `${this.name} (pid ${p.pid}) exited with code ${p.exitCode} signal ${p.signalCode}`;
    return undefined;
  }
  /** Error-level (pino ≥ 50) log lines since the last call; the log array is trimmed as it goes. */
  newErrors(): Array<Record<string, unknown>> {
    const logs = this.server.logs;
    const out = logs.slice(this.logCursor).filter((r) => typeof r.level === 'number' && r.level >= 50);
    this.logCursor = logs.length;
    if (this.logCursor > 20_000) {
      logs.splice(0, this.logCursor);
      this.logCursor = 0;
    }
    return out;
  }
  stderrTail(n = 4000): string {
    return this.stderr.slice(-n);
  }
  /** Waits (bounded) until the process has exited and its stderr is read. */
  async settle(ms = 1000): Promise<void> {
    const p = this.proc;
    if (p.exitCode === null && p.signalCode === null) await Promise.race([new Promise((r) => p.once('exit', r)), sleep(ms)]);
    await sleep(100);
  }
}

interface Outcome {
  bytesSent: number;
  bytesReceived: number;
  /** For a held socket: resolves once it is destroyed. */
  held?: Promise<void>;
}

/** Plays one session on a fresh socket; never throws, never outlives `sessionMs`. */
export async function play(port: number, s: Session, sessionMs: number): Promise<Outcome> {
  const started = Date.now();
  const deadline = started + sessionMs;
  const socket = net.connect({ port, host: '127.0.0.1' });
  socket.setNoDelay(true);
  let closed = false;
  let bytesSent = 0;
  let bytesReceived = 0;
  const closedP = new Promise<void>((resolve) => socket.once('close', () => ((closed = true), resolve())));
  socket.on('error', () => undefined);
  socket.on('data', (d: Buffer) => (bytesReceived += d.length));
  const killer = setTimeout(() => socket.destroy(), sessionMs);
  const finish = (): Outcome => {
    clearTimeout(killer);
    socket.destroy();
    return { bytesSent, bytesReceived };
  };
  const wait = (p: Promise<unknown>, ms: number) => Promise.race([p, sleep(Math.max(0, Math.min(ms, deadline - Date.now())))]);

  const connected = await Promise.race([new Promise<boolean>((r) => socket.once('connect', () => r(true))), closedP.then(() => false), sleep(sessionMs).then(() => false)]);
  if (!connected) return finish();
  if (s.read === 'none') socket.pause();

  const write = async (b: Buffer): Promise<boolean> => {
    if (closed || socket.destroyed || Date.now() > deadline) return false;
    bytesSent += b.length;
    if (!socket.write(b)) await wait(Promise.race([new Promise((r) => socket.once('drain', r)), closedP]), deadline - Date.now());
    return !closed && Date.now() <= deadline;
  };

  steps: for (const step of s.steps) {
    if (step.kind === 'pause') {
      await wait(closedP, step.ms);
      continue;
    }
    const split = 'split' in step ? (step.split ?? 0) : 0;
    for (const buf of encodeStep(step)) {
      if (split > 1 && buf.length > 1) {
        // Cut into `split` pieces, each in its own write with a turn of the event loop between.
        for (let i = 0; i < split; i++) {
          const piece = buf.subarray(Math.floor((buf.length * i) / split), Math.floor((buf.length * (i + 1)) / split));
          if (piece.length && !(await write(piece))) break steps;
          await new Promise((r) => setImmediate(r));
        }
      } else if (!(await write(buf))) break steps;
    }
  }

  if (s.end.delayMs) await wait(closedP, s.end.delayMs);
  switch (s.end.how) {
    case 'end':
      socket.end();
      await wait(closedP, 400);
      return finish();
    case 'destroy':
      return finish();
    case 'reset':
      clearTimeout(killer);
      if (!socket.destroyed) socket.resetAndDestroy();
      return { bytesSent, bytesReceived };
    case 'waitClose':
      await wait(closedP, 600);
      return finish();
    case 'hold': {
      socket.pause();
      const held = (async () => {
        await wait(closedP, s.end.holdMs);
        finish();
      })();
      return { bytesSent, bytesReceived, held };
    }
  }
}

/** The thrown error's first line and the first stack frame in our code (build/ or src/). */
export function crashSignature(stderr: string): string {
  const lines = stderr.split('\n');
  const i = lines.findIndex((l) => /^\w*(Error|Exception)\b.*:/.test(l) || /^Error\b/.test(l));
  if (i < 0) return lines.filter((l) => l.trim()).slice(-1)[0]?.slice(0, 200) ?? 'no stderr';
  const frame = lines.slice(i + 1).find((l) => /\/(build|src)\//.test(l))?.trim().replace(/:\d+:\d+\)?$/, '') ?? '';
  return `${lines[i]!.trim().slice(0, 160)} ${frame.replace(/^at /, 'at ').replace(/\(file:\/\/.*\/(build|src)\//, '($1/')}`;
}

function errorLine(r: Record<string, unknown>): string {
  const err = r.err as { message?: string; stack?: string; type?: string } | undefined;
  return `${String(r.msg)}${err ? `: ${err.type ?? ''} ${err.message ?? ''}\n${err.stack ?? ''}` : ''} ${JSON.stringify({ ...r, err: undefined })}`;
}

/**
 * One health check: a fresh client writes `data` at `offset` and reads it back (and from each
 * mirror port); 'ok', 'timeout' after `ms`, or the error. Its sockets are closed in every case.
 */
export async function healthProbe(target: FuzzTarget, offset: number, data: Buffer, ms: number): Promise<'ok' | 'timeout' | Error> {
  const clients: NbdClient[] = [];
  const attempt = async (): Promise<void> => {
    const c = await NbdClient.connect({ port: target.port, exportName: target.exportName });
    clients.push(c);
    await c.write(offset, data);
    const back = await c.read(offset, data.length);
    if (!back.equals(data)) throw new Error(`read back differs from the ${data.length} bytes written at ${offset}`);
    for (const port of target.mirrorPorts ?? []) {
      const m = await NbdClient.connect({ port, exportName: target.exportName });
      clients.push(m);
      const mb = await m.read(offset, data.length);
      if (!mb.equals(data)) throw new Error(`the peer (port ${port}) reads other bytes at ${offset} than the ${data.length} bytes just acknowledged`);
    }
    await c.disconnect();
  };
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([attempt().then(() => 'ok' as const), new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ms)))]);
  } catch (err) {
    return err as Error;
  } finally {
    clearTimeout(timer);
    for (const c of clients) c.close();
  }
}

/** Runs the fuzzer; resolves with statistics, or throws a FuzzFailure that says how to replay it. */
export async function runFuzz(target: FuzzTarget, o: FuzzOptions): Promise<FuzzStats> {
  if (o.sessions === undefined && o.seconds === undefined && o.only === undefined) throw new Error('give sessions, seconds or only');
  const print = o.print ?? ((l: string) => console.log(l));
  const healthEvery = o.healthEvery ?? 8;
  const sessionMs = o.sessionMs ?? 3000;
  const healthMs = o.healthMs ?? 2000;
  const maxHeld = o.maxHeld ?? 4;
  const failOnErrorLog = o.failOnErrorLog ?? true;
  const watches = target.processes.map((p) => new ProcessWatch(p.name, p.server));
  const started = Date.now();
  const stats: FuzzStats = { seed: o.seed, sessions: 0, steps: 0, bytesSent: 0, bytesReceived: 0, healthChecks: 0, seconds: 0, shapes: {}, ends: {} };
  const held = new Map<number, { session: Session; done: Promise<void> }>();
  const recent: Session[] = [];
  const healthRng = new Rng(mixSeed(o.seed, 0x4ea1));

  // The export's size, and a range sessions never write in, for the health checks.
  const probe = await NbdClient.connect({ port: target.port, exportName: target.exportName });
  const size = probe.info.size;
  probe.close();
  const reservedLen = Math.min(1 << 20, Math.floor(size / 4 / 4096) * 4096);
  const reservedStart = Math.floor(size / 2 / 4096) * 4096;
  const ctx: CaseContext = { exportName: target.exportName, exportSize: size, reserved: { start: reservedStart, end: reservedStart + reservedLen } };
  const replay = (i: number) =>
    `replay: tsx test/fuzz/run.ts --seed ${o.seed} --sessions ${i + 1}${target.mirrorPorts?.length ? ' --mirrored' : ''}  ` +
    `(this session alone: --seed ${o.seed} --session ${i}; vitest: FUZZ_SEED=${o.seed})`;

  const fail = async (kind: FailureKind, reason: string, index: number, extra = ''): Promise<never> => {
    for (const w of watches) if (w.dead()) await w.settle();
    const lines = [`FUZZ FAILURE: ${reason}`, `  seed ${o.seed}, session #${index}, export "${target.exportName}" of ${size} bytes`, `  ${replay(index)}`];
    const culprits = [...recent.slice(-3), ...[...held.values()].map((h) => h.session)];
    const seen = new Set<number>();
    for (const s of culprits.reverse()) {
      if (seen.has(s.index)) continue;
      seen.add(s.index);
      lines.push(describeSession(s));
    }
    if (extra) lines.push(extra);
    for (const w of watches) {
      const tail = w.stderrTail();
      if (tail) lines.push(`--- ${w.name} stderr (tail) ---\n${tail}`);
    }
    const msg = lines.join('\n');
    print(msg);
    stats.seconds = (Date.now() - started) / 1000;
    const signature = kind === 'died' ? `died: ${crashSignature(watches.map((w) => w.stderrTail(20_000)).join('\n'))}` : kind === 'errorLog' ? reason.split('\n')[0]!.replace(/\d+/g, 'N').slice(0, 200) : kind;
    throw new FuzzFailure(msg, kind, signature, o.seed, index, stats, recent.find((s) => s.index === index), ctx);
  };

  const checkProcesses = async (index: number): Promise<void> => {
    for (const w of watches) {
      const dead = w.dead();
      if (dead) await fail('died', `server process died: ${dead}`, index);
      const errs = w.newErrors();
      if (errs.length && failOnErrorLog) await fail('errorLog', `${w.name} logged ${errs.length} error(s): ${errs.map(errorLine).join('\n')}`, index);
    }
  };

  /** Health: a fresh client writes a pattern in the reserved range and reads it back. */
  const health = async (index: number): Promise<void> => {
    const offset = reservedStart + healthRng.int(0, reservedLen - 4096 - 1);
    const data = healthRng.bytes(4096);
    const timed = (ms: number) => healthProbe(target, offset, data, ms);
    const t0 = Date.now();
    const heldNow = [...held.keys()];
    const r = await timed(healthMs);
    stats.healthChecks++;
    if (r === 'ok') return;
    // A refused or reset health connection is most often the process dying: let it finish.
    for (const w of watches) if (!w.dead()) await w.settle(500);
    await checkProcesses(index);
    if (r === 'timeout') {
      // Stalled: is it the sockets held unread? Let them go and try again.
      await Promise.all([...held.values()].map((h) => h.done));
      const again = await timed(10_000);
      await checkProcesses(index);
      if (again === 'ok') {
        await fail('stall', `stall: a fresh client's write+read of 4 KiB took over ${healthMs} ms while ${heldNow.length} socket(s) sat unread when it began (sessions ${heldNow.join(', ') || 'none'}); it worked once they closed`, index);
      }
      await fail('unresponsive', `server unresponsive: health check timed out (${healthMs} ms, then 10 s after ${Date.now() - t0} ms)${again instanceof Error ? `; retry: ${again.message}` : ''}`, index);
    }
    await fail('health', `health check failed: ${r instanceof Error ? r.message : r}`, index);
  };

  const indexes = o.only ?? null;
  const maxSessions = indexes ? indexes.length : (o.sessions ?? Number.MAX_SAFE_INTEGER);
  const endAt = o.seconds !== undefined ? started + o.seconds * 1000 : Number.POSITIVE_INFINITY;
  let lastIndex = 0;
  try {
    for (let n = 0; n < maxSessions && Date.now() < endAt; n++) {
      const index = indexes ? indexes[n]! : (o.first ?? 0) + n;
      lastIndex = index;
      const s = generateSession(o.seed, index, ctx);
      recent.push(s);
      if (recent.length > 8) recent.shift();
      while (held.size >= maxHeld) await Promise.race([...held.values()].map((h) => h.done));
      const t0 = Date.now();
      const out = await play(target.port, s, sessionMs);
      if (process.env.FUZZ_DEBUG) print(`#${index} ${s.shape} ${s.end.how} read=${s.read} ${Date.now() - t0} ms sent ${out.bytesSent}`);
      stats.sessions++;
      stats.steps += s.steps.length;
      stats.bytesSent += out.bytesSent;
      stats.bytesReceived += out.bytesReceived;
      stats.shapes[s.shape] = (stats.shapes[s.shape] ?? 0) + 1;
      stats.ends[s.end.how] = (stats.ends[s.end.how] ?? 0) + 1;
      if (out.held) {
        const done = out.held.then(() => void held.delete(index));
        held.set(index, { session: s, done });
      }
      await checkProcesses(index);
      // Every K sessions, and while each socket held unread is fresh (a stuck reader must stall only itself).
      if ((n + 1) % healthEvery === 0 || out.held) await health(index);
    }
    // The sockets still held, then one last health check with nothing in the way.
    await Promise.all([...held.values()].map((h) => h.done));
    await sleep(50);
    await checkProcesses(lastIndex);
    await health(lastIndex);
  } finally {
    await Promise.all([...held.values()].map((h) => h.done));
    stats.seconds = (Date.now() - started) / 1000;
  }
  return stats;
}

/** The statistics as a small table. */
export function formatStats(s: FuzzStats): string {
  const MiB = 1024 * 1024;
  const rows: Array<[string, string]> = [
    ['seed', String(s.seed)],
    ['sessions', String(s.sessions)],
    ['steps', String(s.steps)],
    ['bytes sent', `${s.bytesSent} (${(s.bytesSent / MiB).toFixed(1)} MiB)`],
    ['bytes received', `${s.bytesReceived} (${(s.bytesReceived / MiB).toFixed(1)} MiB)`],
    ['health checks', String(s.healthChecks)],
    ['seconds', s.seconds.toFixed(1)],
    ['shapes', Object.entries(s.shapes).map(([k, v]) => `${k} ${v}`).join(', ')],
    ['ends', Object.entries(s.ends).map(([k, v]) => `${k} ${v}`).join(', ')],
  ];
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n');
}
