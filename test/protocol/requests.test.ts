import { describe, expect, it } from 'vitest';
import { Cmd, CmdFlag, MAX_REQUEST, NbdErr } from '../../src/protocol/constants.js';
import { ProtocolViolation } from '../../src/protocol/errors.js';
import { decodeRequestHeader, encodeRequestHeader, validateRequest, type Request, type TransmissionContext } from '../../src/protocol/requests.js';

const ctx: TransmissionContext = { size: 1 << 20, readOnly: false, structuredReplies: true, baseAllocation: true, fastZero: true };
const req = (type: number, offset: number, length: number, flags = 0): Request => ({ type, offset, length, flags, cookieHi: 1, cookieLo: 2 });

describe('request header', () => {
  it('round-trips every field, including 64-bit offsets and cookies', () => {
    const r: Request = { flags: 0x1f, type: Cmd.WRITE, cookieHi: 0xdeadbeef, cookieLo: 0xcafef00d, offset: 2 ** 40 + 12345, length: 4096 };
    const b = Buffer.alloc(28);
    encodeRequestHeader(b, 0, r);
    expect(decodeRequestHeader(b, 0)).toEqual(r);
  });

  it('rejects a bad magic as a protocol violation', () => {
    expect(() => decodeRequestHeader(Buffer.alloc(28), 0)).toThrow(ProtocolViolation);
  });
});

describe('validateRequest', () => {
  it('accepts every command within range', () => {
    for (const [type, flags] of [
      [Cmd.READ, CmdFlag.DF],
      [Cmd.WRITE, CmdFlag.FUA],
      [Cmd.TRIM, CmdFlag.FUA],
      [Cmd.CACHE, 0],
      [Cmd.WRITE_ZEROES, CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO],
      [Cmd.BLOCK_STATUS, CmdFlag.REQ_ONE],
    ] as const) {
      expect(validateRequest(req(type, 0, 4096, flags), ctx)).toBe(NbdErr.OK);
    }
    expect(validateRequest(req(Cmd.FLUSH, 0, 0), ctx)).toBe(NbdErr.OK);
    expect(validateRequest(req(Cmd.DISC, 0, 0), ctx)).toBe(NbdErr.OK);
  });

  it('unknown commands and flags are EINVAL', () => {
    expect(validateRequest(req(99, 0, 4096), ctx)).toBe(NbdErr.EINVAL);
    expect(validateRequest(req(Cmd.READ, 0, 4096, CmdFlag.FUA), ctx)).toBe(NbdErr.EINVAL);
    expect(validateRequest(req(Cmd.WRITE, 0, 4096, CmdFlag.REQ_ONE), ctx)).toBe(NbdErr.EINVAL);
    expect(validateRequest(req(Cmd.WRITE, 0, 4096, 1 << 5), ctx)).toBe(NbdErr.EINVAL);
    expect(validateRequest(req(Cmd.READ, 0, 4096, CmdFlag.DF), { ...ctx, structuredReplies: false })).toBe(NbdErr.EINVAL);
    // FAST_ZERO only where the export advertised it
    expect(validateRequest(req(Cmd.WRITE_ZEROES, 0, 4096, CmdFlag.FAST_ZERO), { ...ctx, fastZero: false })).toBe(NbdErr.EINVAL);
  });

  it('past the end: WRITE and WRITE_ZEROES get ENOSPC, the rest EINVAL', () => {
    const end = ctx.size;
    expect(validateRequest(req(Cmd.WRITE, end - 100, 4096), ctx)).toBe(NbdErr.ENOSPC);
    expect(validateRequest(req(Cmd.WRITE_ZEROES, end, 1), ctx)).toBe(NbdErr.ENOSPC);
    for (const t of [Cmd.READ, Cmd.TRIM, Cmd.CACHE, Cmd.BLOCK_STATUS]) expect(validateRequest(req(t, end - 1, 2), ctx)).toBe(NbdErr.EINVAL);
    expect(validateRequest(req(Cmd.READ, 2 ** 63, 1), ctx)).toBe(NbdErr.EINVAL);
  });

  it('requests over the maximum payload: EINVAL, or EOVERFLOW for a DF read', () => {
    const big = { ...ctx, size: 2 ** 40 };
    expect(validateRequest(req(Cmd.WRITE, 0, MAX_REQUEST + 1), big)).toBe(NbdErr.EINVAL);
    expect(validateRequest(req(Cmd.READ, 0, MAX_REQUEST + 1), big)).toBe(NbdErr.EINVAL);
    expect(validateRequest(req(Cmd.READ, 0, MAX_REQUEST + 1, CmdFlag.DF), big)).toBe(NbdErr.EOVERFLOW);
    // Commands without a payload may cover more than the maximum block size.
    expect(validateRequest(req(Cmd.TRIM, 0, MAX_REQUEST * 4), big)).toBe(NbdErr.OK);
    expect(validateRequest(req(Cmd.WRITE, 0, MAX_REQUEST), big)).toBe(NbdErr.OK);
  });

  it('writes to a read-only export are EPERM', () => {
    const ro = { ...ctx, readOnly: true };
    for (const t of [Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES]) expect(validateRequest(req(t, 0, 4096), ro)).toBe(NbdErr.EPERM);
    expect(validateRequest(req(Cmd.READ, 0, 4096), ro)).toBe(NbdErr.OK);
  });

  it('zero-length requests, FLUSH with a range, BLOCK_STATUS without a context are EINVAL', () => {
    expect(validateRequest(req(Cmd.READ, 0, 0), ctx)).toBe(NbdErr.EINVAL);
    expect(validateRequest(req(Cmd.FLUSH, 0, 4096), ctx)).toBe(NbdErr.EINVAL);
    expect(validateRequest(req(Cmd.BLOCK_STATUS, 0, 4096), { ...ctx, baseAllocation: false })).toBe(NbdErr.EINVAL);
  });
});
