// A layer that fails or slows chosen requests of the volume below it, as nbdkit's error and delay
// filters do: tests (and the test-only `serve --test-faults`) use it to make a disk go bad or slow
// on purpose. Rules are checked in order; the first that fires decides the request: it waits
// `delayMs`, then fails with `errno` (the volume below never sees it, so nothing is written) or,
// with no errno, goes on down. Everything else (extents, cache, capabilities) passes through.
import os from 'node:os';
import type { Reservation, Done, Extent, Volume, VolumeCapabilities, ZeroOptions } from './volume.js';

/** `any-write` is every request that changes the volume or asks for durability. */
export type FaultOp = 'read' | 'write' | 'trim' | 'zero' | 'flush' | 'any-write';
type RequestOp = Exclude<FaultOp, 'any-write'>;

export interface FaultRule {
  readonly op: FaultOp;
  /** Fail with this errno name (EIO, ENOSPC, …); without it the rule only delays. */
  readonly errno?: string;
  /**
   * Only requests overlapping [offset, offset + length) (defaults: 0 and the rest of the
   * volume). A rule with a range never matches a flush, which has none.
   */
  readonly offset?: number;
  readonly length?: number;
  /** Fire on this share (0..1) of the matching requests, drawn from the seeded generator. */
  readonly rate?: number;
  /** Let the first `after` matching requests through. */
  readonly after?: number;
  /** Fire at most this many times; then the rule is spent. */
  readonly count?: number;
  /** Hold the request this long before failing it (or, without errno, before passing it on). */
  readonly delayMs?: number;
}

export interface FaultRules {
  /** Seed of the generator `rate` draws from: the same seed and requests fail the same way. */
  readonly seed?: number;
  readonly rules: readonly FaultRule[];
}

/** The errno number of a name on this system, as a real fs error carries it (negative, libuv's way). */
export function errnoNumber(name: string): number | undefined {
  const n = Object.hasOwn(os.constants.errno, name) ? (os.constants.errno as Record<string, number>)[name] : undefined;
  return n === undefined ? undefined : -n;
}

interface Armed {
  readonly rule: FaultRule;
  readonly index: number;
  /** [start, end) of a rule with a range. */
  readonly range: { readonly start: number; readonly end: number } | undefined;
  /** Matching requests seen (for `after`). */
  seen: number;
  /** Times fired (for `count`). */
  fired: number;
}

export class FaultVolume implements Volume {
  /** Requests a rule fired on (failed or delayed) since the volume was made. */
  injected = 0;
  private armed: Armed[] = [];
  private random: () => number = mulberry32(0);

  constructor(
    private readonly inner: Volume,
    rules: FaultRules = { rules: [] },
  ) {
    this.setRules(rules);
  }

  get size(): number {
    return this.inner.size;
  }

  get capabilities(): VolumeCapabilities {
    return this.inner.capabilities;
  }

  /** Replaces every rule; counts (`after`, `count`) and the generator start afresh. */
  setRules(spec: FaultRules): void {
    // Checked before anything is replaced: refused rules leave the old ones in force.
    this.armed = spec.rules.map((rule, index): Armed => {
      if (rule.errno !== undefined && errnoNumber(rule.errno) === undefined) throw new Error(`fault rules[${index}]: "${rule.errno}" is not an errno name`);
      const ranged = rule.offset !== undefined || rule.length !== undefined;
      const start = rule.offset ?? 0;
      return { rule, index, range: ranged ? { start, end: start + (rule.length ?? Infinity) } : undefined, seen: 0, fired: 0 };
    });
    this.random = mulberry32(spec.seed ?? 0);
  }

  read(buf: Buffer, offset: number, done: Done): void {
    this.gate('read', offset, buf.length, done, (d) => this.inner.read(buf, offset, d));
  }

  /** A view only while no read rule could touch the range: reads with faults must go through `read`. */
  view(offset: number, length: number): Buffer | undefined {
    if (this.armed.some((a) => !spent(a) && covers(a, 'read', offset, length))) return undefined;
    return this.inner.view?.(offset, length);
  }

  write(buf: Buffer, offset: number, fua: boolean, done: Done): void {
    this.gate('write', offset, buf.length, done, (d) => this.inner.write(buf, offset, fua, d));
  }

  flush(done: Done): void {
    this.gate('flush', 0, 0, done, (d) => this.inner.flush(d));
  }

  trim(offset: number, length: number, fua: boolean, done: Done): void {
    this.gate('trim', offset, length, done, (d) => this.inner.trim(offset, length, fua, d));
  }

  zero(offset: number, length: number, opts: ZeroOptions, done: Done): void {
    this.gate('zero', offset, length, done, (d) => this.inner.zero(offset, length, opts, d));
  }

  /** Passed through: a thin volume's reservations work under the fault layer too (none on a raw file). */
  reserve(buf: Buffer, offset: number): Reservation | Error | null {
    return this.inner.reserve?.(buf, offset) ?? null;
  }

  waitForSpace(buf: Buffer, offset: number, done: Done): void {
    if (!this.inner.waitForSpace) return done(null);
    this.inner.waitForSpace(buf, offset, done);
  }

  zeroesFast(): boolean {
    return this.inner.zeroesFast?.() !== false;
  }

  cache(offset: number, length: number, done: Done): void {
    this.inner.cache(offset, length, done);
  }

  extents(offset: number, length: number, max: number, done: (err: Error | null, extents: Extent[]) => void): void {
    this.inner.extents(offset, length, max, done);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private gate(op: RequestOp, offset: number, length: number, done: Done, pass: (done: Done) => void): void {
    const a = this.fire(op, offset, length);
    if (!a) return pass(done);
    const { errno, delayMs } = a.rule;
    const act = (): void => (errno === undefined ? pass(done) : done(injectedError(errno, op, a.index)));
    if (delayMs) setTimeout(act, delayMs);
    else act();
  }

  /** The first rule that fires on this request, its counts advanced; undefined when none does. */
  private fire(op: RequestOp, offset: number, length: number): Armed | undefined {
    for (const a of this.armed) {
      if (spent(a) || !covers(a, op, offset, length)) continue;
      if (a.seen++ < (a.rule.after ?? 0)) continue;
      if (a.rule.rate !== undefined && this.random() >= a.rule.rate) continue;
      a.fired++;
      this.injected++;
      return a;
    }
    return undefined;
  }
}

function spent(a: Armed): boolean {
  return a.rule.count !== undefined && a.fired >= a.rule.count;
}

/** Does the rule apply to this request (its operation, and its range if it has one)? */
function covers(a: Armed, op: RequestOp, offset: number, length: number): boolean {
  if (a.rule.op !== op && !(a.rule.op === 'any-write' && op !== 'read')) return false;
  if (!a.range) return true;
  return op !== 'flush' && offset < a.range.end && offset + length > a.range.start;
}

function injectedError(name: string, syscall: RequestOp, index: number): NodeJS.ErrnoException {
  const err: NodeJS.ErrnoException = new Error(`injected ${name} (fault rules[${index}])`);
  err.code = name;
  err.errno = errnoNumber(name);
  err.syscall = syscall;
  return err;
}

/** mulberry32: a tiny seeded generator of floats in [0, 1), so a run with `rate` replays exactly. */
function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
