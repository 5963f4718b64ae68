import { describe, expect, it } from 'vitest';
import { Cmd, CmdFlag, MAX_REQUEST, NbdErr } from '../../src/protocol/constants.js';
import { ProtocolViolation } from '../../src/protocol/errors.js';
import { RequestDecoder } from '../../src/protocol/request-decoder.js';
import { encodeRequestHeader, type Request, type TransmissionContext } from '../../src/protocol/requests.js';

const ctx: TransmissionContext = { size: 1 << 30, readOnly: false, structuredReplies: true, baseAllocation: true, fastZero: true };

function header(type: number, offset: number, length: number, cookieLo: number, flags = 0): Buffer {
  const b = Buffer.alloc(28);
  encodeRequestHeader(b, 0, { type, offset, length, flags, cookieHi: 0, cookieLo });
  return b;
}

function collect(c: TransmissionContext = ctx) {
  const got: Array<{ req: Request; err: NbdErr; payload: string | null }> = [];
  const decoder = new RequestDecoder(c, {
    allocPayload: (n) => Buffer.alloc(n),
    admit: () => true,
    onRequest: (req, err, payload) => got.push({ req, err, payload: payload && payload.toString() }),
  });
  return { got, decoder };
}

/** A stream of pipelined requests: READ, WRITE with payload, FLUSH, oversize WRITE (payload follows), READ. */
function stream(): Buffer {
  const payload = Buffer.from('hello, block device');
  return Buffer.concat([
    header(Cmd.READ, 0, 4096, 1),
    header(Cmd.WRITE, 512, payload.length, 2, CmdFlag.FUA),
    payload,
    header(Cmd.FLUSH, 0, 0, 3),
    header(Cmd.WRITE, (1 << 30) - 4, 8, 4),
    Buffer.from('overflow'),
    header(Cmd.READ, 8, 8, 5),
  ]);
}

function check(got: ReturnType<typeof collect>['got']): void {
  expect(got.map((g) => [g.req.cookieLo, g.req.type, g.err, g.payload])).toEqual([
    [1, Cmd.READ, NbdErr.OK, null],
    [2, Cmd.WRITE, NbdErr.OK, 'hello, block device'],
    [3, Cmd.FLUSH, NbdErr.OK, null],
    [4, Cmd.WRITE, NbdErr.ENOSPC, null],
    [5, Cmd.READ, NbdErr.OK, null],
  ]);
}

describe('RequestDecoder', () => {
  it('holds a request the sink does not admit (allocating nothing for it) and goes on from there when fed again', () => {
    const got: number[] = [];
    const allocated: number[] = [];
    let room = 2;
    const decoder = new RequestDecoder(ctx, {
      allocPayload: (n) => (allocated.push(n), Buffer.alloc(n)),
      admit: () => room-- > 0,
      onRequest: (req) => got.push(req.cookieLo),
    });
    const bytes = stream();
    const used = decoder.feed(bytes);
    // READ and WRITE admitted; FLUSH decoded and held; what follows is left to the caller.
    expect(got).toEqual([1, 2]);
    expect(decoder.holding).toBe(true);
    expect(used).toBe(28 + 28 + 19 + 28);
    expect(decoder.feed(Buffer.alloc(0))).toBe(0); // still no room: still held
    room = 10;
    expect(decoder.feed(Buffer.alloc(0))).toBe(0); // room: the held FLUSH goes on, nothing else is consumed
    expect(got).toEqual([1, 2, 3]);
    decoder.feed(bytes.subarray(used));
    expect(got).toEqual([1, 2, 3, 4, 5]);
    expect(allocated).toEqual([19]); // the refused WRITE's payload was skipped, never allocated
  });

  it('decodes pipelined requests from one chunk', () => {
    const { got, decoder } = collect();
    decoder.feed(stream());
    check(got);
    expect(decoder.midRequest).toBe(false);
  });

  it('decodes the same stream split at every possible point and byte by byte', () => {
    const s = stream();
    for (let cut = 1; cut < s.length; cut++) {
      const { got, decoder } = collect();
      decoder.feed(s.subarray(0, cut));
      decoder.feed(s.subarray(cut));
      check(got);
    }
    const { got, decoder } = collect();
    for (let i = 0; i < s.length; i++) decoder.feed(s.subarray(i, i + 1));
    check(got);
  });

  it('hands out the rest of a large payload for the socket to read into, mixing with fed bytes', () => {
    const { got, decoder } = collect();
    const payload = Buffer.alloc(200_000, 0x61);
    payload.write('start', 0);
    payload.write('end', payload.length - 3);
    expect(decoder.payloadTarget(1)).toBeUndefined(); // no payload in progress
    decoder.feed(Buffer.concat([header(Cmd.WRITE, 0, payload.length, 7), payload.subarray(0, 1000)]));
    expect(decoder.payloadTarget(250_000)).toBeUndefined(); // less than asked for is left
    let target = decoder.payloadTarget(64 * 1024)!;
    expect(target.length).toBe(payload.length - 1000);
    payload.copy(target, 0, 1000, 150_000); // a read straight into the payload buffer
    decoder.payloadArrived(149_000);
    target = decoder.payloadTarget(1)!;
    expect(target.length).toBe(50_000);
    payload.copy(target, 0, 150_000);
    decoder.payloadArrived(50_000);
    expect(decoder.payloadTarget(1)).toBeUndefined();
    decoder.feed(header(Cmd.FLUSH, 0, 0, 8));
    expect(got.map((g) => [g.req.cookieLo, g.payload?.length, g.payload?.slice(0, 5), g.payload?.slice(-3)])).toEqual([
      [7, 200_000, 'start', 'end'],
      [8, undefined, undefined, undefined],
    ]);
  });

  it('never keeps a view of the chunk (the receive buffer is reused)', () => {
    const { got, decoder } = collect();
    const s = stream();
    const chunk = Buffer.from(s);
    decoder.feed(chunk);
    chunk.fill(0);
    check(got);
  });

  it('skips the payload of an oversize WRITE and keeps decoding', () => {
    const { got, decoder } = collect();
    const n = MAX_REQUEST + 10;
    decoder.feed(header(Cmd.WRITE, 0, n, 7));
    for (let left = n; left > 0; left -= 1 << 20) decoder.feed(Buffer.alloc(Math.min(left, 1 << 20)));
    expect(decoder.midRequest).toBe(false);
    decoder.feed(header(Cmd.READ, 0, 1, 8));
    expect(got.map((g) => [g.req.cookieLo, g.err])).toEqual([
      [7, NbdErr.EINVAL],
      [8, NbdErr.OK],
    ]);
  });

  it('reports a partly received request', () => {
    const { decoder } = collect();
    decoder.feed(header(Cmd.WRITE, 0, 100, 1).subarray(0, 10));
    expect(decoder.midRequest).toBe(true);
  });

  it('throws on a bad magic', () => {
    const { decoder } = collect();
    expect(() => decoder.feed(Buffer.alloc(28, 0xff))).toThrow(ProtocolViolation);
  });
});
