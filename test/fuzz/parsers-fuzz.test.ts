// Fuzzing the other parsers that face a socket (issue 11 item 6), with fast-check:
//  - the peer link's FrameDecoder, in-process: mutated valid frame streams fed in random chunk
//    splits (and partly through the direct-read path the link uses). It may only deliver whole
//    frames or throw its own ProtocolViolation — never a RangeError/TypeError — and an
//    unmutated stream comes out exactly as it went in. Body decoders (HELLO, VOLUME_OP and its
//    answer among them) get the delivered bodies.
//  - the witness and admin HTTP servers, in a child process (test/fuzz/http-targets.ts) so that
//    a crash shows as that process dying: mutated requests over raw sockets (bad methods and
//    targets, huge headers, huge or lying Content-Length, chunked bodies, invalid JSON,
//    slowloris-like partial requests closed early), each followed by GET /status, which must
//    still be answered correctly.
// Seeded: FUZZ_SEED=S replays (printed either way); fast-check prints the shrunk counterexample.
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { ProtocolViolation } from '../../src/protocol/errors.js';
import { decodeHello } from '../../src/replication/hello.js';
import { decodeOpAck, decodeVolumeOp } from '../../src/replication/volume-ops.js';
import {
  decodeHoles,
  decodeRange,
  decodeWriteHeader,
  encodeFrame,
  encodeFrameHeader,
  encodeRange,
  encodeWriteHeader,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  MAX_FRAME_BODY,
  PeerMsg,
  readDigest,
  type FrameHeader,
} from '../../src/replication/peer-protocol.js';

const seed = (process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31)) | 0;
const scale = process.env.FUZZ_SECONDS !== undefined ? Number(process.env.FUZZ_SECONDS) / 20 : 1;
console.log(`parsers fuzz seed ${seed} (replay: FUZZ_SEED=${seed} npx vitest run test/fuzz/parsers-fuzz.test.ts)`);

// ------------------------------------------------------------------------------------------
// Peer link frames.

const frameTypes = [
  PeerMsg.HELLO,
  PeerMsg.HELLO_ACK,
  PeerMsg.ERROR,
  PeerMsg.PING,
  PeerMsg.PONG,
  PeerMsg.WRITE,
  PeerMsg.WRITE_ACK,
  PeerMsg.FLUSH,
  PeerMsg.FLUSH_ACK,
  PeerMsg.TRIM,
  PeerMsg.ZERO,
  PeerMsg.BITMAP_RUNS,
  PeerMsg.RS_REQUEST,
  PeerMsg.RS_DATA,
  PeerMsg.RS_ACK,
  PeerMsg.RS_DONE,
  PeerMsg.PEER_READ,
  PeerMsg.PEER_READ_DATA,
  PeerMsg.RS_CSUM_REQUEST,
  PeerMsg.RS_DIFF,
  PeerMsg.RS_HOLES_REQUEST,
  PeerMsg.RS_HOLES,
  PeerMsg.VERIFY_HOLES_REQUEST,
  PeerMsg.VERIFY_HOLES,
  PeerMsg.VERIFY_REQUEST,
  PeerMsg.VERIFY_DIGESTS,
  PeerMsg.RESYNC_NOW,
  PeerMsg.LEAVING,
  PeerMsg.VOLUME_OP,
  PeerMsg.VOLUME_OP_ACK,
];

const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));

const helloBody = fc
  .record({
    version: fc.oneof(fc.constant(1), fc.integer()),
    cluster: fc.string({ maxLength: 300 }),
    node: fc.string({ maxLength: 70 }),
    volumes: fc.array(fc.record({ name: fc.string({ maxLength: 8 }), size: fc.integer(), generation: fc.anything(), state: fc.constantFrom('UpToDate', 'Outdated', 'x'), dirty: fc.boolean() }), { maxLength: 3 }),
  })
  .map((h) => Buffer.from(JSON.stringify(h)));

/** VOLUME_OP bodies: near-valid changes with hostile names, sizes and fields. */
const volumeOpBody = fc
  .record({
    op: fc.constantFrom('create', 'resize', 'delete', 'wipe', 7),
    name: fc.oneof(fc.constantFrom('vm-1', '../x', '', '.h', 'a/b', 'x'.repeat(65)), fc.string({ maxLength: 70 })),
    size: fc.oneof(fc.constantFrom(4096, 0, -4096, 4097, 2 ** 44, 2 ** 53, 1.5, '4096', null), fc.integer()),
    force: fc.oneof(fc.boolean(), fc.constant('yes')),
    generation: fc.oneof(fc.constant('0123456789abcdef'), fc.string({ maxLength: 20 })),
    extra: fc.option(fc.anything(), { nil: undefined }),
  })
  .map((o) => Buffer.from(JSON.stringify(o)));

/** A frame as the peer link sends it: a type-appropriate body (or random bytes). */
const frameArb = fc
  .record({
    type: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...frameTypes) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
    flags: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })),
    id: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    volume: fc.nat(4),
    offset: fc.oneof(fc.nat(1 << 30), fc.maxSafeNat()),
    length: fc.nat(1 << 20),
    data: bytes(3000),
    hello: helloBody,
    volumeOp: volumeOpBody,
  })
  .map((f) => {
    let body: Buffer;
    switch (f.type) {
      case PeerMsg.WRITE:
        body = Buffer.concat([encodeWriteHeader({ volume: f.volume, flags: f.flags & 1, offset: f.offset, digest: 0x1234n }), f.data]);
        break;
      case PeerMsg.RS_REQUEST:
      case PeerMsg.RS_ACK:
      case PeerMsg.PEER_READ:
      case PeerMsg.VERIFY_REQUEST:
        body = encodeRange(f.volume, f.offset, f.length);
        break;
      case PeerMsg.RS_DATA:
      case PeerMsg.RS_DIFF:
        body = Buffer.concat([encodeRange(f.volume, f.offset, f.data.length), Buffer.alloc(8, 7), f.data]);
        break;
      case PeerMsg.HELLO:
        body = f.hello;
        break;
      case PeerMsg.VOLUME_OP:
        body = f.volumeOp;
        break;
      default:
        body = f.data.subarray(0, f.data.length % 64);
    }
    return { type: f.type, flags: f.flags, id: f.id, body };
  });

type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'set'; at: number; value: number }
  | { op: 'cut'; at: number }
  | { op: 'insert'; at: number; data: Buffer }
  | { op: 'delete'; at: number; n: number }
  | { op: 'length'; frame: number; value: number }
  | { op: 'magic'; frame: number; value: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat(7) }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.constantFrom(0, 0xff, 0x7f, 0x80) }),
  fc.record({ op: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), data: bytes(40) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 30 }) }),
  fc.record({
    op: fc.constant('length' as const),
    frame: fc.nat(),
    value: fc.oneof(fc.nat(64), fc.constantFrom(MAX_FRAME_BODY, MAX_FRAME_BODY + 1, 0xffffffff, 0x80000000), fc.integer({ min: 0, max: 0xffffffff })),
  }),
  fc.record({ op: fc.constant('magic' as const), frame: fc.nat(), value: fc.integer({ min: 0, max: 0xffffffff }) }),
);

function applyMutations(stream: Buffer, starts: number[], ms: Mutation[]): Buffer {
  let s = Buffer.from(stream);
  for (const m of ms) {
    if (s.length === 0) break;
    const at = 'at' in m ? m.at % s.length : 0;
    switch (m.op) {
      case 'flip':
        s[at] = s[at]! ^ (1 << m.bit);
        break;
      case 'set':
        s[at] = m.value;
        break;
      case 'cut':
        s = s.subarray(0, at);
        break;
      case 'insert':
        s = Buffer.concat([s.subarray(0, at), m.data, s.subarray(at)]);
        break;
      case 'delete':
        s = Buffer.concat([s.subarray(0, at), s.subarray(at + m.n)]);
        break;
      case 'length':
      case 'magic': {
        const start = starts[m.frame % starts.length]!;
        if (start + FRAME_HEADER_SIZE <= s.length) s.writeUInt32BE(m.value >>> 0, start + (m.op === 'length' ? 8 : 0));
        break;
      }
    }
  }
  return s;
}

/** Body decoders must also only ever throw ProtocolViolation. */
function decodeBody(h: FrameHeader, body: Buffer): void {
  const guard = (fn: () => unknown) => {
    try {
      fn();
    } catch (err) {
      if (!(err instanceof ProtocolViolation)) throw new Error(`body decoder for frame type ${h.type} threw ${(err as Error).name}: ${(err as Error).message}`);
    }
  };
  guard(() => decodeRange(body));
  guard(() => decodeHoles(body));
  guard(() => decodeWriteHeader(body));
  guard(() => readDigest(body, 16));
  if (h.type === PeerMsg.HELLO || body.length < 512) guard(() => decodeHello(body));
  guard(() => decodeVolumeOp(body));
  if (body.length >= 4) guard(() => decodeOpAck(body));
}

describe('peer link frame decoder', () => {
  it('delivers whole frames or throws ProtocolViolation, for any mutation and chunking', () => {
    fc.assert(
      fc.property(
        fc.array(frameArb, { minLength: 1, maxLength: 8 }),
        fc.array(mutationArb, { maxLength: 4 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        fc.array(fc.boolean(), { maxLength: 16 }),
        (frames, mutations, cutsRaw, direct) => {
          const parts: Buffer[] = [];
          const starts: number[] = [];
          let pos = 0;
          for (const f of frames) {
            starts.push(pos);
            const b = encodeFrame(f.type, f.id, f.body, f.flags);
            parts.push(b);
            pos += b.length;
          }
          const clean = Buffer.concat(parts);
          const stream = applyMutations(clean, starts, mutations);
          const got: Array<{ header: FrameHeader; body: Buffer }> = [];
          const decoder = new FrameDecoder({
            allocBody: (n) => {
              if (!Number.isInteger(n) || n < 0 || n > MAX_FRAME_BODY) throw new Error(`allocBody(${n}) asked for more than MAX_FRAME_BODY`);
              return Buffer.allocUnsafe(n);
            },
            onFrame: (header, body) => got.push({ header, body }),
          });
          const cuts = [...new Set(cutsRaw.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
          const chunks: Buffer[] = [];
          let last = 0;
          for (const c of [...cuts, stream.length]) {
            if (c > last) chunks.push(stream.subarray(last, c));
            last = Math.max(last, c);
          }
          let violation: ProtocolViolation | undefined;
          try {
            chunks.forEach((chunk, i) => {
              let rest = chunk;
              // The socket's direct path: bytes read straight into the body buffer.
              const target = direct[i % Math.max(1, direct.length)] ? decoder.bodyTarget(1) : undefined;
              if (target) {
                const n = Math.min(target.length, rest.length);
                rest.copy(target, 0, 0, n);
                decoder.bodyArrived(n);
                rest = rest.subarray(n);
              }
              if (rest.length) decoder.feed(rest);
            });
          } catch (err) {
            if (!(err instanceof ProtocolViolation)) throw err;
            violation = err;
          }
          for (const f of got) {
            expect(f.body.length).toBe(f.header.length);
            decodeBody(f.header, f.body);
          }
          if (mutations.length === 0) {
            expect(violation).toBeUndefined();
            expect(got.map((f) => [f.header.type, f.header.flags, f.header.id, f.body.toString('hex')])).toEqual(
              frames.map((f) => [f.type, f.flags, f.id, f.body.toString('hex')]),
            );
          }
        },
      ),
      { seed, numRuns: Math.round(10_000 * scale), interruptAfterTimeLimit: 8_000 * scale },
    );
  });

  it('a header with the largest body announced, then nothing, holds no frame and throws nothing', () => {
    const frames: FrameHeader[] = [];
    const d = new FrameDecoder({ allocBody: (n) => Buffer.allocUnsafe(n), onFrame: (h) => frames.push(h) });
    d.feed(encodeFrameHeader(PeerMsg.WRITE, 1n, MAX_FRAME_BODY));
    expect(frames).toEqual([]);
    expect(() => new FrameDecoder({ allocBody: (n) => Buffer.allocUnsafe(n), onFrame: () => undefined }).feed(encodeFrameHeader(PeerMsg.WRITE, 1n, MAX_FRAME_BODY + 1))).toThrow(ProtocolViolation);
  });
});

// ------------------------------------------------------------------------------------------
// Witness and admin HTTP servers.

interface HttpTargets {
  proc: ChildProcess;
  witness: number;
  admin: number;
  stderr: () => string;
}

const childScript = fileURLToPath(new URL('./http-targets.ts', import.meta.url));

function startHttpTargets(): Promise<HttpTargets> {
  const proc = spawn(process.execPath, ['--import', 'tsx', childScript], { stdio: ['pipe', 'pipe', 'pipe'], cwd: fileURLToPath(new URL('../../', import.meta.url)) });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-20_000)));
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => (proc.kill('SIGKILL'), reject(new Error(`http fuzz targets did not start; stderr: ${stderr}`))), 20_000);
    proc.once('exit', (code) => (clearTimeout(t), reject(new Error(`http fuzz targets exited with ${code}; stderr: ${stderr}`))));
    createInterface({ input: proc.stdout! }).once('line', (line) => {
      clearTimeout(t);
      proc.removeAllListeners('exit');
      const { witness, admin } = JSON.parse(line) as { witness: number; admin: number };
      resolve({ proc, witness, admin, stderr: () => stderr });
    });
  });
}

const alive = (t: HttpTargets) => t.proc.exitCode === null && t.proc.signalCode === null;

/** GET /status with node's client: status code and parsed JSON (or the error). */
function getStatus(port: number, ms = 3000): Promise<{ status: number; json: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/status', agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, json: JSON.parse(body) });
        } catch (err) {
          reject(new Error(`GET /status answered ${res.statusCode} with non-JSON ${JSON.stringify(body.slice(0, 200))}`));
        }
      });
    });
    req.setTimeout(ms, () => req.destroy(new Error(`GET /status: no answer in ${ms} ms`)));
    req.on('error', reject);
  });
}

type Delivery = { how: 'whole' } | { how: 'chunks'; cuts: number[] } | { how: 'partialEnd'; keep: number } | { how: 'partialReset'; keep: number } | { how: 'slowloris'; keep: number; pieces: number };

interface HttpCase {
  target: 'witness' | 'admin';
  requests: Array<{ method: string; path: string; version: string; headers: Array<[string, string]>; contentLength: string; body: string }>;
  delivery: Delivery;
}

const longString = (ch: string) => fc.integer({ min: 1000, max: 120_000 }).map((n) => ch.repeat(n));

const methodArb = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom('GET', 'POST') },
  { weight: 3, arbitrary: fc.constantFrom('PUT', 'DELETE', 'HEAD', 'OPTIONS', 'PATCH', 'TRACE', 'CONNECT', 'get', 'P0ST', 'PRI', 'SEARCH', 'PROPFIND') },
  { weight: 1, arbitrary: fc.string({ minLength: 0, maxLength: 12 }) },
  { weight: 1, arbitrary: longString('G') },
);

const pathArb = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom('/status', '/claim', '/release', '/metrics', '/resolve?volume=vol0&discard=a', '/verify?volume=vol0&source=b', '/stop', '/resolve', '/verify') },
  {
    weight: 4,
    arbitrary: fc.constantFrom('//', '///status', '//x', 'http://x:99999/status', 'http://[::1/', 'http://a:b@c/status', '*', 'status', '/%00', '/%zz', '/status?%zz=%', '/status#x', '/status?' + 'a=1&'.repeat(500), 'http://witness/status', '\\status', '/ä', '/%'),
  },
  { weight: 2, arbitrary: fc.string({ maxLength: 40 }).map((s) => `/${s}`) },
  { weight: 1, arbitrary: longString('a').map((s) => `/${s}`) },
);

const versionArb = fc.oneof({ weight: 10, arbitrary: fc.constant('HTTP/1.1') }, { weight: 1, arbitrary: fc.constantFrom('HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'HTTP/1.1x', '', 'HTTP/9.9', 'http/1.1') });

const headerArb: fc.Arbitrary<[string, string]> = fc.oneof(
  { weight: 4, arbitrary: fc.constant<[string, string]>(['content-type', 'application/json']) },
  { weight: 2, arbitrary: fc.constantFrom<[string, string]>(['transfer-encoding', 'chunked'], ['transfer-encoding', 'gzip, chunked'], ['expect', '100-continue'], ['connection', 'close'], ['connection', 'keep-alive'], ['content-encoding', 'gzip']) },
  { weight: 2, arbitrary: fc.tuple(fc.stringMatching(/^[a-zA-Z-]{1,20}$/), fc.string({ maxLength: 30 })) },
  { weight: 1, arbitrary: fc.tuple(fc.string({ maxLength: 10 }), fc.string({ maxLength: 10 })) },
  { weight: 1, arbitrary: longString('h').map((v): [string, string] => ['x-huge', v]) },
);

const bodyArb = fc.oneof(
  { weight: 5, arbitrary: fc.constantFrom('{"cluster":"a+b","node":"a"}', '{"cluster":"a+b","node":"b"}', '{"cluster":"x","node":"y"}') },
  { weight: 3, arbitrary: fc.constantFrom('', 'not json', '{', '{"cluster":', 'null', '[]', '1e999', '"x"', '{"cluster":"a+b"}', '{"cluster":"a+b","node":"a","extra":1}', '{"__proto__":{"x":1},"cluster":"a","node":"b"}', '{"cluster":1,"node":[]}', '\u0000\uffff') },
  { weight: 2, arbitrary: fc.json({ maxDepth: 3 }) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 50_000 }).map((n) => '['.repeat(n) + ']'.repeat(n)) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 50_000 }).map((n) => '{"a":'.repeat(n) + '1' + '}'.repeat(n)) },
  { weight: 1, arbitrary: longString('x') },
  { weight: 1, arbitrary: fc.string({ maxLength: 200 }) },
);

const contentLengthArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant('exact') },
  { weight: 2, arbitrary: fc.constant('none') },
  { weight: 2, arbitrary: fc.constantFrom('-1', '99999999999999999999', '1e3', 'abc', '0x10', ' 5', '4294967296', '9007199254740993', '', '5, 6') },
  { weight: 2, arbitrary: fc.integer({ min: -5, max: 100_000 }).map((d) => `exact${d >= 0 ? '+' : ''}${d}`) },
  { weight: 1, arbitrary: fc.constant('twice') },
);

const requestArb = fc.record({ method: methodArb, path: pathArb, version: versionArb, headers: fc.array(headerArb, { maxLength: 6 }), contentLength: contentLengthArb, body: bodyArb });

const deliveryArb: fc.Arbitrary<Delivery> = fc.oneof(
  { weight: 4, arbitrary: fc.constant<Delivery>({ how: 'whole' }) },
  { weight: 2, arbitrary: fc.array(fc.nat(), { minLength: 1, maxLength: 6 }).map((cuts): Delivery => ({ how: 'chunks', cuts })) },
  { weight: 2, arbitrary: fc.nat().map((keep): Delivery => ({ how: 'partialEnd', keep })) },
  { weight: 2, arbitrary: fc.nat().map((keep): Delivery => ({ how: 'partialReset', keep })) },
  { weight: 1, arbitrary: fc.record({ keep: fc.nat(), pieces: fc.integer({ min: 2, max: 8 }) }).map((r): Delivery => ({ how: 'slowloris', ...r })) },
);

const caseArb = (target: HttpCase['target']): fc.Arbitrary<HttpCase> =>
  fc.record({
    target: fc.constant(target),
    requests: fc.array(requestArb, { minLength: 1, maxLength: 3 }),
    delivery: deliveryArb,
  });

function encodeRequest(r: HttpCase['requests'][number]): Buffer {
  const body = Buffer.from(r.body, 'utf8');
  const lines = [`${r.method} ${r.path} ${r.version}`.trimEnd(), 'host: 127.0.0.1'];
  const chunked = r.headers.some(([k, v]) => k.toLowerCase() === 'transfer-encoding' && v.includes('chunked'));
  for (const [k, v] of r.headers) lines.push(`${k}: ${v}`);
  const cl = r.contentLength;
  if (cl === 'exact') lines.push(`content-length: ${body.length}`);
  else if (cl === 'twice') lines.push(`content-length: ${body.length}`, `content-length: ${body.length + 1}`);
  else if (cl.startsWith('exact')) lines.push(`content-length: ${Math.max(0, body.length + Number(cl.slice(5)))}`);
  else if (cl !== 'none') lines.push(`content-length: ${cl}`);
  const head = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
  // A chunked body: one chunk (its size possibly lying), then the last chunk.
  const payload = chunked ? Buffer.concat([Buffer.from(`${(body.length + (cl === 'none' ? 0 : 3)).toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]) : body;
  return Buffer.concat([head, payload]);
}

/** Sends one case on a raw socket; bounded (1.5 s); never throws. */
function sendCase(port: number, c: HttpCase): Promise<void> {
  const bytes = Buffer.concat(c.requests.map(encodeRequest));
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve();
    };
    const timer = setTimeout(finish, 1500);
    s.on('error', finish);
    s.on('close', finish);
    s.resume();
    s.on('connect', async () => {
      const d = c.delivery;
      const keep = 'keep' in d ? d.keep % Math.max(1, bytes.length) : bytes.length;
      switch (d.how) {
        case 'whole':
          s.end(bytes);
          return;
        case 'chunks': {
          const cuts = [...new Set(d.cuts.map((x) => x % (bytes.length + 1)))].sort((a, b) => a - b);
          let last = 0;
          for (const cut of [...cuts, bytes.length]) {
            if (cut > last && !s.destroyed) s.write(bytes.subarray(last, cut));
            last = Math.max(last, cut);
            await new Promise((r) => setTimeout(r, 2));
          }
          if (!s.destroyed) s.end();
          return;
        }
        case 'partialEnd':
          s.end(bytes.subarray(0, keep));
          return;
        case 'partialReset':
          s.write(bytes.subarray(0, keep), () => setTimeout(() => !s.destroyed && s.resetAndDestroy(), 5));
          return;
        case 'slowloris': {
          const part = bytes.subarray(0, keep);
          for (let i = 0; i < d.pieces && !s.destroyed; i++) {
            s.write(part.subarray(Math.floor((part.length * i) / d.pieces), Math.floor((part.length * (i + 1)) / d.pieces)));
            await new Promise((r) => setTimeout(r, 20));
          }
          finish(); // closed before the request is complete
          return;
        }
      }
    });
  });
}

function describeCase(c: HttpCase): string {
  const short = (s: string) => (s.length > 120 ? `${JSON.stringify(s.slice(0, 120))}…(${s.length} chars)` : JSON.stringify(s));
  return `${c.target}, delivery ${JSON.stringify(c.delivery)}\n${c.requests
    .map((r) => `  ${short(r.method)} ${short(r.path)} ${short(r.version)} headers=${r.headers.map(([k, v]) => `${short(k)}: ${short(v)}`).join(', ')} content-length=${r.contentLength} body=${short(r.body)}`)
    .join('\n')}`;
}

describe('witness and admin HTTP servers', () => {
  let targets: HttpTargets | undefined;
  afterAll(() => {
    targets?.proc.kill('SIGKILL');
  });

  it.each(['witness', 'admin'] as const)(
    'mutated requests over raw sockets to the %s server never crash it; GET /status is still answered correctly',
    async (server) => {
      // A fresh child per server: a predicate still running when the previous test's time ran
      // out must not crash (and be blamed on) this one's.
      if (targets) {
        const old = targets;
        old.proc.kill('SIGKILL');
        if (old.proc.exitCode === null && old.proc.signalCode === null) await new Promise((r) => old.proc.once('exit', r));
      }
      targets = await startHttpTargets();
      let cases = 0;
      const details = await fc.check(
        fc.asyncProperty(caseArb(server), async (c) => {
          if (!targets || !alive(targets)) targets = await startHttpTargets();
          const t = targets;
          cases++;
          await sendCase(c.target === 'witness' ? t.witness : t.admin, c);
          await new Promise((r) => setTimeout(r, 5));
          if (!alive(t)) {
            await new Promise((r) => setTimeout(r, 100));
            const msg = `${c.target} process died (code ${t.proc.exitCode}, signal ${t.proc.signalCode}) on:\n${describeCase(c)}\nstderr:\n${t.stderr().slice(-3000)}`;
            throw new Error(msg);
          }
          for (const which of ['witness', 'admin'] as const) {
            const r = await getStatus(which === 'witness' ? t.witness : t.admin);
            expect(r.status, `${which} GET /status after:\n${describeCase(c)}`).toBe(200);
            if (which === 'witness') expect(r.json).toMatchObject({ grants: expect.any(Object) });
            else expect(r.json).toEqual({ node: 'a', volumes: {} });
          }
        }),
        { seed, numRuns: 100_000, interruptAfterTimeLimit: 10_000 * scale },
      );
      // fast-check's own report prints whole counterexamples (headers of 100 KB): say it shortly.
      if (details.failed) {
        const c = details.counterexample?.[0];
        const err = details.errorInstance as Error | null;
        throw new Error(
          `${server} HTTP fuzz failed (seed ${seed}, fast-check path "${details.counterexamplePath}", shrunk ${details.numShrinks} times; replay: FUZZ_SEED=${seed} npx vitest run test/fuzz/parsers-fuzz.test.ts)\n` +
            `${c ? describeCase(c) : '(no counterexample)'}\n${err?.message ?? ''}`,
        );
      }
      console.log(`http fuzz (${server}): ${cases} cases`);
    },
    60_000 * Math.max(1, scale) + 60_000,
  );
});
