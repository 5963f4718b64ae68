// Structured hostile NBD sessions for the fuzzer (issue 11 item 6). A session is what one raw TCP
// socket does: a list of steps (handshake bytes, options whose length fields may lie, requests
// pipelined without reading the replies, garbage, pauses) and then an abrupt end. Everything is
// derived from (seed, session index) with a small PRNG, so a session can be replayed alone, and
// steps are plain JSON-able objects, so a failing session can be printed.
import { Cmd, CmdFlag, IHAVEOPT, MAX_OPTION_LENGTH, MAX_PAYLOAD, Opt, REQUEST_MAGIC } from '../../src/protocol/constants.js';

// ---------------------------------------------------------------------------------------------
// PRNG: splitmix32 to seed, sfc32 to draw. Deterministic across runs and platforms.

export function mixSeed(seed: number, index: number, salt = 0): number {
  let z = (seed ^ Math.imul(index + 1, 0x9e3779b9) ^ Math.imul(salt + 1, 0x85ebca6b)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad) >>> 0;
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97) >>> 0;
  return (z ^ (z >>> 15)) >>> 0;
}

export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    this.a = mixSeed(seed, 0, 1);
    this.b = mixSeed(seed, 1, 2);
    this.c = mixSeed(seed, 2, 3);
    this.d = 1;
    for (let i = 0; i < 12; i++) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform float in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }

  /** Integer in [lo, hi] (inclusive), hi - lo < 2^53. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.float() * items.length)]!;
  }

  /** Picks by weight: [[weight, value], …]. */
  weighted<T>(table: ReadonlyArray<readonly [number, T]>): T {
    let total = 0;
    for (const [w] of table) total += w;
    let x = this.float() * total;
    for (const [w, v] of table) {
      x -= w;
      if (x < 0) return v;
    }
    return table[table.length - 1]![1];
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      const x = this.u32();
      b[i] = x & 0xff;
      if (i + 1 < n) b[i + 1] = (x >>> 8) & 0xff;
      if (i + 2 < n) b[i + 2] = (x >>> 16) & 0xff;
      if (i + 3 < n) b[i + 3] = x >>> 24;
    }
    return b;
  }

  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
}

// ---------------------------------------------------------------------------------------------
// Steps.

/** One thing the raw socket does. Byte contents are kept small (hex) or derived (seeds, fills). */
export type Step =
  /** The 4 bytes of client flags answering the greeting. */
  | { kind: 'clientFlags'; flags: number; split?: number }
  /**
   * One option: IHAVEOPT (or a bad magic), option, the declared length, then `data` (hex) —
   * `declared` may differ from the data's length (a lie); `sendBytes` cuts the whole option
   * short (a truncated option).
   */
  | { kind: 'option'; opt: number; declared: number; data: string; badMagic?: boolean; sendBytes?: number; note?: string; split?: number }
  /** `count` copies of the same well-formed option in a row. */
  | { kind: 'options'; opt: number; count: number; data: string; note?: string }
  /**
   * One request header (28 bytes) and, for WRITE, `payload` bytes of payload (which may be fewer
   * than `length`: the rest never comes). `magic` replaces REQUEST_MAGIC when set.
   */
  | { kind: 'request'; type: number; flags: number; offset: string; length: number; cookie: number; payload: number; magic?: number; note?: string; split?: number }
  /** `count` requests like `request`, cookies counting up, the offset moving by `stride`. */
  | { kind: 'requests'; type: number; flags: number; offset: string; stride: string; length: number; count: number; payload: number; note?: string }
  /** `length` pseudo-random bytes from `seed`. */
  | { kind: 'garbage'; seed: number; length: number; split?: number }
  /** Wait before the next step (lets the server act on a partial input). */
  | { kind: 'pause'; ms: number };

export type EndHow =
  /** Half-close (FIN) and wait (bounded) for the server to close. */
  | 'end'
  /** Close the socket (FIN) without waiting. */
  | 'destroy'
  /** RST: `socket.resetAndDestroy()`. */
  | 'reset'
  /** Stop reading and keep the socket open in the background for `holdMs` (a stuck reader), then destroy. */
  | 'hold'
  /** Wait (bounded) for the server to hang up by itself. */
  | 'waitClose';

export interface Session {
  readonly seed: number;
  readonly index: number;
  /** What the generator meant to do (handshake, transmission, raw). */
  readonly shape: string;
  readonly steps: Step[];
  /** Read (and drop) the server's bytes, or never read them. */
  readonly read: 'drain' | 'none';
  readonly end: { how: EndHow; delayMs: number; holdMs: number };
  /** Bytes the steps write in total. */
  readonly bytes: number;
}

export interface CaseContext {
  readonly exportName: string;
  readonly exportSize: number;
  /** A range no fuzz session writes inside, where health checks write and read back. */
  readonly reserved: { readonly start: number; readonly end: number };
  /** Upper bound of bytes one session writes (default 70 MiB). */
  readonly maxSessionBytes?: number;
}

const MiB = 1024 * 1024;
const DEFAULT_MAX_SESSION_BYTES = 70 * MiB;
/** Some servers serve requests past the advertised maximum (nbdkit: up to 64 MiB): both edges are tried. */
const MAX_SERVED = 64 * MiB;

// ---------------------------------------------------------------------------------------------
// Encoding steps to bytes.

/** Shared payload bytes for WRITEs (large payloads are views of it, never allocated per request). */
let patternBuffer: Buffer | undefined;
function pattern(n: number): Buffer {
  if (!patternBuffer || patternBuffer.length < n) {
    const size = Math.max(n, 1 * MiB);
    patternBuffer = new Rng(0xfa22).bytes(Math.min(size, 4 * MiB));
    if (patternBuffer.length < n) patternBuffer = Buffer.concat([patternBuffer, Buffer.alloc(n - patternBuffer.length, 0x5a)]);
  }
  return patternBuffer.subarray(0, n);
}

function optionHeader(opt: number, declared: number, badMagic = false): Buffer {
  const h = Buffer.alloc(16);
  if (badMagic) h.writeBigUInt64BE(IHAVEOPT ^ 0x0100000000000000n, 0);
  else h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(opt >>> 0, 8);
  h.writeUInt32BE(declared >>> 0, 12);
  return h;
}

function requestHeader(magic: number, flags: number, type: number, cookie: number, offset: bigint, length: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(magic >>> 0, 0);
  b.writeUInt16BE(flags & 0xffff, 4);
  b.writeUInt16BE(type & 0xffff, 6);
  b.writeUInt32BE(0xf022, 8);
  b.writeUInt32BE(cookie >>> 0, 12);
  b.writeBigUInt64BE(BigInt.asUintN(64, offset), 16);
  b.writeUInt32BE(length >>> 0, 24);
  return b;
}

/** The buffers a step writes, in order (big WRITE payloads stay separate views of one pattern). */
export function encodeStep(step: Step): Buffer[] {
  switch (step.kind) {
    case 'clientFlags': {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(step.flags >>> 0);
      return [b];
    }
    case 'option': {
      const whole = Buffer.concat([optionHeader(step.opt, step.declared, step.badMagic), Buffer.from(step.data, 'hex')]);
      return [step.sendBytes !== undefined ? whole.subarray(0, step.sendBytes) : whole];
    }
    case 'options': {
      const data = Buffer.from(step.data, 'hex');
      const one = Buffer.concat([optionHeader(step.opt, data.length), data]);
      const all = Buffer.allocUnsafe(one.length * step.count);
      for (let i = 0; i < step.count; i++) one.copy(all, i * one.length);
      return [all];
    }
    case 'request': {
      const h = requestHeader(step.magic ?? REQUEST_MAGIC, step.flags, step.type, step.cookie, BigInt(step.offset), step.length);
      return step.payload > 0 ? [h, pattern(step.payload)] : [h];
    }
    case 'requests': {
      const out: Buffer[] = [];
      const stride = BigInt(step.stride);
      let offset = BigInt(step.offset);
      const hs = Buffer.allocUnsafe(28 * step.count);
      for (let i = 0; i < step.count; i++, offset += stride) {
        requestHeader(REQUEST_MAGIC, step.flags, step.type, 1000 + i, offset, step.length).copy(hs, 28 * i);
        if (step.payload > 0) {
          out.push(hs.subarray(28 * i, 28 * i + 28), pattern(step.payload));
        }
      }
      return step.payload > 0 ? out : [hs];
    }
    case 'garbage':
      return [new Rng(step.seed).bytes(step.length)];
    case 'pause':
      return [];
  }
}

export function stepBytes(step: Step): number {
  switch (step.kind) {
    case 'clientFlags':
      return 4;
    case 'option':
      return step.sendBytes ?? 16 + step.data.length / 2;
    case 'options':
      return step.count * (16 + step.data.length / 2);
    case 'request':
      return 28 + step.payload;
    case 'requests':
      return step.count * (28 + step.payload);
    case 'garbage':
      return step.length;
    case 'pause':
      return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Describing (for failure reports).

const optNames: Record<number, string> = {
  [Opt.EXPORT_NAME]: 'EXPORT_NAME',
  [Opt.ABORT]: 'ABORT',
  [Opt.LIST]: 'LIST',
  [Opt.PEEK_EXPORT]: 'PEEK_EXPORT',
  [Opt.STARTTLS]: 'STARTTLS',
  [Opt.INFO]: 'INFO',
  [Opt.GO]: 'GO',
  [Opt.STRUCTURED_REPLY]: 'STRUCTURED_REPLY',
  [Opt.LIST_META_CONTEXT]: 'LIST_META_CONTEXT',
  [Opt.SET_META_CONTEXT]: 'SET_META_CONTEXT',
  [Opt.EXTENDED_HEADERS]: 'EXTENDED_HEADERS',
};
const cmdNames: Record<number, string> = {
  [Cmd.READ]: 'READ',
  [Cmd.WRITE]: 'WRITE',
  [Cmd.DISC]: 'DISC',
  [Cmd.FLUSH]: 'FLUSH',
  [Cmd.TRIM]: 'TRIM',
  [Cmd.CACHE]: 'CACHE',
  [Cmd.WRITE_ZEROES]: 'WRITE_ZEROES',
  [Cmd.BLOCK_STATUS]: 'BLOCK_STATUS',
};

function hexShort(hex: string): string {
  return hex.length <= 96 ? hex : `${hex.slice(0, 96)}…(${hex.length / 2} bytes)`;
}

export function describeStep(s: Step): string {
  const split = 'split' in s && s.split ? ` split=${s.split}` : '';
  switch (s.kind) {
    case 'clientFlags':
      return `clientFlags 0x${s.flags.toString(16)}${split}`;
    case 'option': {
      const len = s.data.length / 2;
      const lie = s.declared !== len ? ` LIE(declared ${s.declared}, data ${len})` : '';
      const cut = s.sendBytes !== undefined ? ` TRUNCATED to ${s.sendBytes} bytes` : '';
      return `option ${optNames[s.opt] ?? `#${s.opt}`} len=${s.declared}${lie}${cut}${s.badMagic ? ' BAD-MAGIC' : ''} data=${hexShort(s.data)}${s.note ? ` (${s.note})` : ''}${split}`;
    }
    case 'options':
      return `${s.count}× option ${optNames[s.opt] ?? `#${s.opt}`} data=${hexShort(s.data)}${s.note ? ` (${s.note})` : ''}`;
    case 'request':
      return `request ${cmdNames[s.type] ?? `#${s.type}`} flags=0x${s.flags.toString(16)} offset=${s.offset} length=${s.length} cookie=${s.cookie}${s.payload || s.type === Cmd.WRITE ? ` payload=${s.payload}` : ''}${s.magic !== undefined ? ` MAGIC=0x${s.magic.toString(16)}` : ''}${s.note ? ` (${s.note})` : ''}${split}`;
    case 'requests':
      return `${s.count}× request ${cmdNames[s.type] ?? `#${s.type}`} flags=0x${s.flags.toString(16)} offset=${s.offset}+i×${s.stride} length=${s.length}${s.payload ? ` payload=${s.payload}` : ''}${s.note ? ` (${s.note})` : ''}`;
    case 'garbage':
      return `garbage ${s.length} bytes (seed ${s.seed})${split}`;
    case 'pause':
      return `pause ${s.ms} ms`;
  }
}

export function describeSession(s: Session): string {
  const lines = [
    `session #${s.index} (seed ${s.seed}, ${s.shape}, read=${s.read}, ${s.bytes} bytes, end=${s.end.how}` +
      `${s.end.delayMs ? ` after ${s.end.delayMs} ms` : ''}${s.end.how === 'hold' ? ` holding ${s.end.holdMs} ms` : ''})`,
  ];
  s.steps.forEach((st, i) => lines.push(`  ${String(i).padStart(3)}: ${describeStep(st)}`));
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Generation.

function u32be(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}
function u16be(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff);
  return b;
}

/** INFO/GO data: name length, name, count, info requests. */
function infoData(name: string, requests: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([u32be(n.length), n, u16be(requests.length), ...requests.map(u16be)]);
}

function metaData(name: string, queries: string[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([u32be(n.length), n, u32be(queries.length), ...queries.flatMap((q) => [u32be(Buffer.byteLength(q)), Buffer.from(q, 'utf8')])]);
}

class Builder {
  readonly steps: Step[] = [];
  bytes = 0;
  constructor(
    readonly rng: Rng,
    readonly maxBytes: number,
  ) {}
  room(): number {
    return this.maxBytes - this.bytes;
  }
  push(step: Step): boolean {
    const n = stepBytes(step);
    if (n > this.room()) return false;
    if (step.kind !== 'pause' && step.kind !== 'options' && step.kind !== 'requests' && this.rng.chance(0.08)) {
      (step as { split?: number }).split = this.rng.int(2, 6);
    }
    this.steps.push(step);
    this.bytes += n;
    return true;
  }
  maybePause(p: number): void {
    if (this.rng.chance(p)) this.steps.push({ kind: 'pause', ms: this.rng.weighted([[3, 0], [5, this.rng.int(1, 20)], [1, this.rng.int(20, 150)]]) });
  }
}

function randomName(rng: Rng, exportName: string): string {
  return rng.weighted<string>([
    [6, exportName],
    [1, ''],
    [1, `${exportName}x`],
    [1, 'nope'],
    [1, 'ä\u0000\uffff'],
    [1, Buffer.from(rng.bytes(rng.int(1, 40))).toString('latin1')],
  ]);
}

/** A well-formed option that leaves the server in the handshake (it answers and goes on). */
function harmlessOption(rng: Rng, ctx: CaseContext, structured: boolean): { opt: number; data: Buffer; note?: string } {
  const name = randomName(rng, ctx.exportName);
  return rng.weighted<() => { opt: number; data: Buffer; note?: string }>([
    [3, () => ({ opt: Opt.LIST, data: Buffer.alloc(0) })],
    [1, () => ({ opt: Opt.LIST, data: rng.bytes(rng.int(1, 16)), note: 'LIST with data' })],
    [3, () => ({ opt: Opt.INFO, data: infoData(name, Array.from({ length: rng.int(0, 5) }, () => rng.weighted([[3, rng.int(0, 3)], [1, rng.int(0, 0xffff)]]))) })],
    [2, () => ({ opt: Opt.INFO, data: lyingInfoData(rng, name), note: 'inner lengths lie' })],
    [2, () => ({ opt: rng.weighted([[2, rng.int(12, 64)], [1, rng.int(0, 0xffffffff)], [1, Opt.PEEK_EXPORT], [1, Opt.EXTENDED_HEADERS]]), data: rng.bytes(rng.int(0, 32)), note: 'unknown/unsupported' })],
    [1, () => ({ opt: Opt.STARTTLS, data: rng.chance(0.7) ? Buffer.alloc(0) : rng.bytes(4) })],
    [1, () => ({ opt: Opt.STRUCTURED_REPLY, data: rng.bytes(rng.int(1, 8)), note: 'STRUCTURED_REPLY with data' })],
    [2, () => ({ opt: Opt.LIST_META_CONTEXT, data: metaData(name, randomQueries(rng)) })],
    [1, () => ({ opt: structured ? Opt.LIST_META_CONTEXT : Opt.SET_META_CONTEXT, data: lyingMetaData(rng, name), note: 'inner lengths lie' })],
    [1, () => ({ opt: Opt.INFO, data: infoData('x'.repeat(rng.int(4090, 5000)), []), note: 'long name' })],
  ])();
}

function randomQueries(rng: Rng): string[] {
  return Array.from({ length: rng.weighted([[3, rng.int(0, 3)], [1, rng.int(4, 100)]]) }, () =>
    rng.weighted<string>([
      [4, 'base:allocation'],
      [2, 'base:'],
      [1, 'qemu:dirty-bitmap:x'],
      [1, ''],
      [1, 'b'.repeat(rng.int(1, 4200))],
    ]),
  );
}

function lyingInfoData(rng: Rng, name: string): Buffer {
  const d = infoData(name, Array.from({ length: rng.int(0, 4) }, () => rng.int(0, 3)));
  const n = Buffer.byteLength(name);
  return rng.weighted<() => Buffer>([
    [2, () => (d.writeUInt32BE(rng.pick([n + 1, n + 100, 0xffffffff, 4097, rng.int(0, 0xffffffff)]) >>> 0, 0), d)],
    [2, () => (d.writeUInt16BE(rng.pick([0xffff, rng.int(0, 0xffff), 1 + (d.length - 6 - n) / 2]), 4 + n), d)],
    [1, () => d.subarray(0, rng.int(0, Math.max(0, d.length - 1)))],
    [1, () => Buffer.concat([d, rng.bytes(rng.int(1, 5))])],
  ])();
}

function lyingMetaData(rng: Rng, name: string): Buffer {
  const d = metaData(name, ['base:allocation']);
  const n = Buffer.byteLength(name);
  return rng.weighted<() => Buffer>([
    [2, () => (d.writeUInt32BE(rng.pick([0xffffffff, n + 1, 4097]) >>> 0, 0), d)],
    [2, () => (d.writeUInt32BE(rng.pick([0xffffffff, 2, 0, 1 << 30]) >>> 0, 4 + n), d)],
    [2, () => (d.writeUInt32BE(rng.pick([0xffffffff, 16, 4097, 0]) >>> 0, 8 + n), d)],
    [1, () => d.subarray(0, rng.int(0, d.length - 1))],
    [1, () => Buffer.concat([d, rng.bytes(rng.int(1, 9))])],
  ])();
}

function optionStep(opt: number, data: Buffer, note?: string): Step {
  return { kind: 'option', opt, declared: data.length, data: data.toString('hex'), ...(note ? { note } : {}) };
}

interface Negotiated {
  structured: boolean;
  baseAllocation: boolean;
}

/** Well-formed handshake up to GO (or EXPORT_NAME), with some harmless options first. */
function negotiate(b: Builder, ctx: CaseContext): Negotiated {
  const rng = b.rng;
  b.push({ kind: 'clientFlags', flags: rng.weighted([[8, 3], [2, 1], [1, 0], [1, 2]]) });
  let structured = false;
  let baseAllocation = false;
  const junk = rng.weighted([[5, 0], [4, rng.int(1, 4)], [1, -1]]);
  if (junk === -1) {
    const o = harmlessOption(rng, ctx, false);
    b.push({ kind: 'options', opt: o.opt, count: rng.int(40, 400), data: o.data.toString('hex'), note: `burst${o.note ? `, ${o.note}` : ''}` });
  }
  for (let i = 0; i < junk; i++) {
    const o = harmlessOption(rng, ctx, structured);
    b.push(optionStep(o.opt, o.data, o.note));
    b.maybePause(0.1);
  }
  if (rng.chance(0.75)) {
    b.push(optionStep(Opt.STRUCTURED_REPLY, Buffer.alloc(0)));
    structured = true;
    if (rng.chance(0.8)) {
      const qs = rng.chance(0.85) ? ['base:allocation'] : randomQueries(rng);
      b.push(optionStep(Opt.SET_META_CONTEXT, metaData(ctx.exportName, qs)));
      baseAllocation = qs.includes('base:allocation');
    }
  }
  b.maybePause(0.1);
  if (rng.chance(0.1)) {
    b.push(optionStep(Opt.EXPORT_NAME, Buffer.from(ctx.exportName, 'utf8')));
    return { structured: false, baseAllocation: false };
  }
  b.push(optionStep(Opt.GO, infoData(ctx.exportName, Array.from({ length: rng.int(0, 4) }, () => rng.int(0, 3)))));
  return { structured, baseAllocation };
}

const validFlags: Record<number, number> = {
  [Cmd.READ]: CmdFlag.DF,
  [Cmd.WRITE]: CmdFlag.FUA,
  [Cmd.TRIM]: CmdFlag.FUA,
  [Cmd.WRITE_ZEROES]: CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO,
  [Cmd.BLOCK_STATUS]: CmdFlag.REQ_ONE,
};

function requestType(rng: Rng): number {
  return rng.weighted<number>([
    [25, Cmd.READ],
    [20, Cmd.WRITE],
    [6, Cmd.TRIM],
    [6, Cmd.FLUSH],
    [5, Cmd.CACHE],
    [8, Cmd.WRITE_ZEROES],
    [12, Cmd.BLOCK_STATUS],
    [3, Cmd.DISC],
    [3, rng.int(8, 15)],
    [2, rng.int(16, 0xffff)],
  ]);
}

function requestFlags(rng: Rng, type: number): number {
  return rng.weighted<number>([
    [14, 0],
    [5, (validFlags[type] ?? 0) & rng.int(0, 0xffff)],
    [1, 1 << rng.int(0, 15)],
    [1, rng.int(0, 0xffff)],
  ]);
}

function requestLength(rng: Rng, size: number, type: number): number {
  if (type === Cmd.FLUSH || type === Cmd.DISC) return rng.chance(0.85) ? 0 : rng.pick([1, 4096, 0xffffffff]);
  return rng.weighted<number>([
    [10, 4096],
    [8, rng.int(1, 65536)],
    [4, 512 * rng.int(1, 2048)],
    [4, 0],
    [2, 1],
    [3, MAX_PAYLOAD],
    [4, MAX_PAYLOAD + 1],
    [1, MAX_SERVED],
    [2, MAX_SERVED + 1],
    [2, rng.int(MAX_PAYLOAD + 2, 0xffffffff)],
    [3, 0xffffffff],
    [1, rng.int(0, 0xffffffff)],
    [1, Math.min(size, 0xffffffff)],
  ]);
}

function requestOffset(rng: Rng, size: number, length: number): bigint {
  const s = BigInt(size);
  return rng.weighted<() => bigint>([
    [10, () => BigInt(4096 * rng.int(0, Math.max(0, Math.floor((size - 4096) / 4096))))],
    [4, () => BigInt(rng.int(0, size - 1))],
    [3, () => 0n],
    [3, () => s - BigInt(Math.min(length, size))],
    [2, () => s - BigInt(rng.int(1, 4096))],
    [3, () => s],
    [2, () => s + BigInt(rng.int(1, 1 << 30))],
    [1, () => s - 1n],
    [1, () => 1n << 63n],
    [1, () => (1n << 64n) - 1n],
    [1, () => (1n << 64n) - BigInt(rng.int(1, 1 << 20))],
    [1, () => 1n << 53n],
    [1, () => rng.u64()],
  ])();
}

/** Moves an in-range data-changing request off the health checks' reserved range. */
function avoidReserved(ctx: CaseContext, type: number, offset: bigint, length: number): bigint {
  const changes = type === Cmd.WRITE || type === Cmd.TRIM || type === Cmd.WRITE_ZEROES || type >= 8;
  const { start, end } = ctx.reserved;
  if (!changes || offset >= BigInt(end) || offset + BigInt(length) <= BigInt(start)) return offset;
  // Below the reserved range if it fits there, else above it (or past the end: refused anyway).
  if (length <= start) return BigInt(Math.max(0, Math.min(Number(offset), start - length)));
  return BigInt(end);
}

function transmission(b: Builder, ctx: CaseContext, n: Negotiated): void {
  const rng = b.rng;
  const size = ctx.exportSize;
  const count = rng.weighted([[45, rng.int(1, 8)], [30, rng.int(9, 64)], [15, rng.int(65, 300)], [5, rng.int(301, 3000)]]);
  let cookie = rng.chance(0.9) ? 1 : rng.u32();
  let afterDisc = false;
  for (let i = 0; i < count && b.room() > 28; i++) {
    if (afterDisc && rng.chance(0.3)) {
      b.push({ kind: 'garbage', seed: rng.u32(), length: rng.int(1, 4096) });
      continue;
    }
    if (rng.chance(0.03)) {
      // A run of the same edge request, pipelined.
      const type = rng.weighted([[3, Cmd.READ], [2, Cmd.BLOCK_STATUS], [1, Cmd.TRIM], [1, Cmd.CACHE], [1, Cmd.WRITE_ZEROES], [1, Cmd.WRITE], [1, rng.int(8, 99)]]);
      const length = type === Cmd.BLOCK_STATUS && rng.chance(0.4) ? 0 : requestLength(rng, size, type);
      const outside = rng.chance(0.6);
      const offset = outside ? BigInt(size) + BigInt(rng.int(0, 1 << 20)) : BigInt(4096 * rng.int(0, 1000));
      const payload = type === Cmd.WRITE && length <= 65536 && rng.chance(0.7) ? length : 0;
      const reqCount = rng.int(10, payload ? 200 : 2000);
      const stride = rng.pick([0n, 4096n, BigInt(length)]);
      const off = outside ? offset : avoidReserved(ctx, type, offset, Number(stride) * reqCount + length);
      b.push({ kind: 'requests', type, flags: requestFlags(rng, type), offset: off.toString(), stride: stride.toString(), length, count: reqCount, payload, note: outside ? 'out of range' : undefined });
      continue;
    }
    const type = requestType(rng);
    const flags = (n.structured ? rng.chance(0.3) : false) && type === Cmd.READ ? CmdFlag.DF : requestFlags(rng, type);
    const length = requestLength(rng, size, type);
    let offset = type === Cmd.FLUSH || type === Cmd.DISC ? (rng.chance(0.85) ? 0n : requestOffset(rng, size, length)) : requestOffset(rng, size, length);
    offset = avoidReserved(ctx, type, offset, length);
    let payload = 0;
    if (type === Cmd.WRITE) {
      const full = length <= b.room() - 28 && length <= MAX_SERVED + 1;
      payload = rng.weighted([
        [full ? 14 : 0, length],
        [4, rng.int(0, Math.min(length, 65536, Math.max(0, b.room() - 28)))],
        [2, 0],
      ]);
    } else if (rng.chance(0.02)) {
      payload = rng.int(1, 512); // a payload nobody asked for: read as the next header
    }
    const magic = rng.chance(0.02) ? rng.weighted([[1, rng.u32()], [1, (REQUEST_MAGIC ^ (1 << rng.int(0, 31))) >>> 0], [1, 0x21e41c0d], [1, 0]]) : undefined;
    const step: Step = { kind: 'request', type, flags, offset: offset.toString(), length, cookie: cookie++ >>> 0, payload, ...(magic !== undefined ? { magic } : {}) };
    if (!b.push(step)) {
      if (type === Cmd.WRITE) b.push({ ...step, payload: 0, note: 'payload never sent' });
      break;
    }
    if (type === Cmd.DISC) afterDisc = true;
    b.maybePause(0.04);
  }
}

/** A handshake full of lies: wrong flags, lying lengths, truncated options, bursts, garbage. */
function hostileHandshake(b: Builder, ctx: CaseContext): void {
  const rng = b.rng;
  b.push({
    kind: 'clientFlags',
    flags: rng.weighted([[10, 3], [3, 1], [1, 0], [1, 4], [1, 0xffffffff], [1, rng.u32()], [1, 0x80000003]]),
  });
  const options = rng.weighted([[6, rng.int(1, 5)], [2, rng.int(6, 39)], [2, rng.int(40, 300)]]);
  let structured = false;
  for (let i = 0; i < options && b.room() > 0; i++) {
    const choice = rng.weighted<string>([
      [10, 'harmless'],
      [2, 'structured'],
      [2, 'meta'],
      [3, 'lieShort'],
      [3, 'lieLong'],
      [3, 'lieHuge'],
      [1, 'limit'],
      [1, 'badMagic'],
      [2, 'truncated'],
      [1, 'abort'],
      [1, 'go'],
      [1, 'exportName'],
      [1, 'garbage'],
    ]);
    const o = harmlessOption(rng, ctx, structured);
    const data = o.data;
    switch (choice) {
      case 'harmless':
        b.push(optionStep(o.opt, data, o.note));
        break;
      case 'structured':
        b.push(optionStep(Opt.STRUCTURED_REPLY, Buffer.alloc(0)));
        structured = true;
        break;
      case 'meta':
        b.push(optionStep(rng.pick([Opt.SET_META_CONTEXT, Opt.LIST_META_CONTEXT]), metaData(randomName(rng, ctx.exportName), randomQueries(rng))));
        break;
      case 'lieShort':
        b.push({ kind: 'option', opt: o.opt, declared: rng.int(0, Math.max(0, data.length - 1)), data: data.toString('hex'), note: 'declared length too short' });
        break;
      case 'lieLong':
        b.push({ kind: 'option', opt: o.opt, declared: data.length + rng.weighted([[3, rng.int(1, 16)], [1, rng.int(17, MAX_OPTION_LENGTH - data.length)]]), data: data.toString('hex'), note: 'declared length too long' });
        break;
      case 'lieHuge':
        b.push({ kind: 'option', opt: o.opt, declared: rng.pick([0xffffffff, 0x80000000, MAX_OPTION_LENGTH + 1, rng.int(MAX_OPTION_LENGTH + 1, 0xffffffff)]), data: data.toString('hex'), note: 'declared length up to 4 GiB' });
        break;
      case 'limit': {
        const len = rng.pick([MAX_OPTION_LENGTH, MAX_OPTION_LENGTH - 1]);
        b.push({ kind: 'option', opt: rng.pick([Opt.INFO, Opt.GO, Opt.LIST, 99]), declared: len, data: new Rng(rng.u32()).bytes(len).toString('hex'), note: 'at the option length limit' });
        break;
      }
      case 'badMagic':
        b.push({ ...(optionStep(o.opt, data) as Extract<Step, { kind: 'option' }>), badMagic: true });
        break;
      case 'truncated': {
        const whole = 16 + data.length;
        b.push({ kind: 'option', opt: o.opt, declared: data.length, data: data.toString('hex'), sendBytes: rng.int(1, whole - 1) });
        i = options; // nothing can follow a truncated option meaningfully
        break;
      }
      case 'abort':
        b.push(optionStep(Opt.ABORT, rng.chance(0.7) ? Buffer.alloc(0) : rng.bytes(rng.int(1, 8))));
        break;
      case 'go':
        b.push(optionStep(Opt.GO, rng.chance(0.5) ? infoData(ctx.exportName, []) : lyingInfoData(rng, randomName(rng, ctx.exportName))));
        break;
      case 'exportName':
        b.push(optionStep(Opt.EXPORT_NAME, Buffer.from(randomName(rng, ctx.exportName), 'latin1')));
        break;
      case 'garbage':
        b.push({ kind: 'garbage', seed: rng.u32(), length: rng.int(1, 2048) });
        break;
    }
    b.maybePause(0.05);
  }
  if (rng.chance(0.2)) b.push({ kind: 'garbage', seed: rng.u32(), length: rng.int(1, 70_000) });
}

/** A client that asks for big reads and never reads the replies (held open unread afterwards). */
function stuckReader(b: Builder, ctx: CaseContext, n: Negotiated): void {
  const rng = b.rng;
  for (let i = rng.int(1, 6); i > 0; i--) {
    const length = rng.pick([MAX_PAYLOAD, 16 * MiB, 8 * MiB + 4096, 4 * MiB]);
    const offset = BigInt(4096 * rng.int(0, Math.max(0, Math.floor((ctx.exportSize - length) / 4096))));
    // DF (or no structured replies): one data chunk, not holes, so the reply really is that big.
    b.push({ kind: 'request', type: Cmd.READ, flags: n.structured ? CmdFlag.DF : 0, offset: offset.toString(), length, cookie: 100 + i, payload: 0, note: 'stuck reader' });
  }
}

function raw(b: Builder): void {
  const rng = b.rng;
  const kind = rng.weighted([[3, 'garbage'], [2, 'flagsThenGarbage'], [1, 'nothing'], [1, 'partialFlags']]);
  if (kind === 'flagsThenGarbage') b.push({ kind: 'clientFlags', flags: 3 });
  if (kind === 'partialFlags') b.push({ kind: 'garbage', seed: rng.u32(), length: rng.int(1, 3) });
  if (kind === 'garbage' || kind === 'flagsThenGarbage') b.push({ kind: 'garbage', seed: rng.u32(), length: rng.weighted([[5, rng.int(1, 64)], [3, rng.int(65, 4096)], [1, rng.int(4097, 1 << 20)]]) });
}

/** The session `index` of the run with `seed`: always the same for the same arguments. */
export function generateSession(seed: number, index: number, ctx: CaseContext): Session {
  const sessionSeed = mixSeed(seed, index);
  const rng = new Rng(sessionSeed);
  // Most sessions stay small; a few may send big payloads.
  const maxBytes = rng.weighted([[90, 256 * 1024], [8, 8 * MiB], [2, ctx.maxSessionBytes ?? DEFAULT_MAX_SESSION_BYTES]]);
  const b = new Builder(rng, maxBytes);
  const shape = rng.weighted<string>([[60, 'transmission'], [27, 'handshake'], [9, 'raw'], [4, 'stuckReader']]);
  if (shape === 'transmission') transmission(b, ctx, negotiate(b, ctx));
  else if (shape === 'handshake') hostileHandshake(b, ctx);
  else if (shape === 'stuckReader') stuckReader(b, ctx, negotiate(b, ctx));
  else raw(b);
  const how = shape === 'stuckReader' ? 'hold' : rng.weighted<EndHow>([[25, 'end'], [20, 'destroy'], [25, 'reset'], [12, 'hold'], [18, 'waitClose']]);
  const read = how === 'hold' ? 'none' : rng.chance(0.8) ? 'drain' : 'none';
  const delayMs = rng.weighted([[5, 0], [4, rng.int(1, 50)], [1, rng.int(51, 400)]]);
  const holdMs = how === 'hold' ? rng.int(1500, 3000) : 0;
  return { seed: sessionSeed, index, shape, steps: b.steps, read, end: { how, delayMs, holdMs }, bytes: b.bytes };
}
