import { describe, expect, it } from 'vitest';
import {
  IHAVEOPT,
  Info,
  MAX_OPTION_LENGTH,
  MAX_OPTIONS,
  NBD_MAGIC,
  Opt,
  OPTION_REPLY_MAGIC,
  Rep,
  TransmissionFlag,
} from '../../src/protocol/constants.js';
import { metaContextData, optionBytes as option } from '../support/nbd-client.js';
import { Handshake, parseInfoRequest, parseMetaContextRequest, type ExportCatalog, type ExportDescriptor, type HandshakeStep } from '../../src/protocol/handshake.js';

const disk: ExportDescriptor = {
  name: 'disk',
  description: 'the disk',
  size: 1 << 20,
  flags: TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH,
  minBlockSize: 1,
  preferredBlockSize: 4096,
  maxBlockSize: 32 << 20,
};
const other: ExportDescriptor = { ...disk, name: 'other', description: '' };
const catalog: ExportCatalog = {
  list: () => [disk, other],
  find: (n) => (n === '' ? disk : [disk, other].find((e) => e.name === n)),
};

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
function str32(s: string): Buffer {
  return Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);
}
function infoData(name: string, ...infos: number[]): Buffer {
  return Buffer.concat([str32(name), u16(infos.length), ...infos.map(u16)]);
}
const metaData = (name: string, ...queries: string[]) => metaContextData(name, queries);

interface Reply {
  opt: number;
  type: number;
  data: Buffer;
}
function replies(step: HandshakeStep): Reply[] {
  return step.out.map((b) => {
    expect(b.readBigUInt64BE(0)).toBe(OPTION_REPLY_MAGIC);
    expect(b.readUInt32BE(16)).toBe(b.length - 20);
    return { opt: b.readUInt32BE(8), type: b.readUInt32BE(12), data: b.subarray(20) };
  });
}

/** A handshake past the client flags (fixed newstyle + no zeroes). */
function started(): Handshake {
  const h = new Handshake(catalog);
  expect(h.receive(u32(3)).outcome.kind).toBe('continue');
  return h;
}

describe('handshake greeting and client flags', () => {
  it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES', () => {
    const g = Handshake.greeting();
    expect(g.length).toBe(18);
    expect(g.readBigUInt64BE(0)).toBe(NBD_MAGIC);
    expect(g.readBigUInt64BE(8)).toBe(IHAVEOPT);
    expect(g.readUInt16BE(16)).toBe(3);
  });

  it('drops a client that sets unknown flags', () => {
    const step = new Handshake(catalog).receive(u32(0x10));
    expect(step.outcome).toMatchObject({ kind: 'close', clean: false });
  });

  it('drops a client whose option lacks IHAVEOPT', () => {
    const bad = option(Opt.LIST);
    bad.writeUInt32BE(0xdeadbeef, 0);
    expect(started().receive(bad).outcome).toMatchObject({ kind: 'close', clean: false });
  });

  it('skips an option longer than the limit without buffering it, answers ERR_TOO_BIG, and goes on', () => {
    const h = started();
    const head = Buffer.alloc(16);
    head.writeBigUInt64BE(IHAVEOPT, 0);
    head.writeUInt32BE(Opt.GO, 8);
    head.writeUInt32BE(3 * MAX_OPTION_LENGTH, 12);
    expect(h.receive(head).out).toHaveLength(0);
    // The data arrives in pieces, the last one followed by a valid option in the same chunk.
    expect(h.receive(Buffer.alloc(2 * MAX_OPTION_LENGTH, 0x55)).out).toHaveLength(0);
    const step = h.receive(Buffer.concat([Buffer.alloc(MAX_OPTION_LENGTH, 0x55), option(Opt.LIST)]));
    expect(step.outcome.kind).toBe('continue');
    const r = replies(step);
    expect(r[0]).toMatchObject({ opt: Opt.GO, type: Rep.ERR_TOO_BIG });
    expect(r.at(-1)).toMatchObject({ opt: Opt.LIST, type: Rep.ACK });
  });

  it('drops a client whose EXPORT_NAME is longer than the limit (that option has no error reply)', () => {
    const head = Buffer.alloc(16);
    head.writeBigUInt64BE(IHAVEOPT, 0);
    head.writeUInt32BE(Opt.EXPORT_NAME, 8);
    head.writeUInt32BE(MAX_OPTION_LENGTH + 1, 12);
    expect(started().receive(head).outcome).toMatchObject({ kind: 'close', clean: false });
  });

  it(`answers option ${MAX_OPTIONS + 1} with ERR_TOO_BIG and hangs up`, () => {
    const h = started();
    const many = h.receive(Buffer.concat(Array.from({ length: MAX_OPTIONS }, () => option(Opt.STRUCTURED_REPLY))));
    expect(many.outcome.kind).toBe('continue');
    expect(replies(many).every((r) => r.type === Rep.ACK)).toBe(true);
    const last = h.receive(option(Opt.LIST));
    expect(last.outcome).toMatchObject({ kind: 'close', clean: false });
    expect(replies(last)).toEqual([expect.objectContaining({ opt: Opt.LIST, type: Rep.ERR_TOO_BIG })]);
  });

  it('handles options split into single bytes', () => {
    const h = new Handshake(catalog);
    const bytes = Buffer.concat([u32(3), option(Opt.LIST)]);
    const out: Buffer[] = [];
    for (const byte of bytes) out.push(...h.receive(Buffer.from([byte])).out);
    expect(out.map((b) => b.readUInt32BE(12))).toEqual([Rep.SERVER, Rep.SERVER, Rep.ACK]);
  });
});

describe('options', () => {
  it('LIST names every export with its description, then ACK', () => {
    const r = replies(started().receive(option(Opt.LIST)));
    expect(r.map((x) => x.type)).toEqual([Rep.SERVER, Rep.SERVER, Rep.ACK]);
    const first = r[0]!.data;
    const nameLen = first.readUInt32BE(0);
    expect(first.toString('utf8', 4, 4 + nameLen)).toBe('disk');
    expect(first.toString('utf8', 4 + nameLen)).toBe('the disk');
  });

  it('LIST with data is ERR_INVALID', () => {
    expect(replies(started().receive(option(Opt.LIST, Buffer.from('x'))))[0]!.type).toBe(Rep.ERR_INVALID);
  });

  it('ABORT is acknowledged and ends the handshake cleanly', () => {
    const step = started().receive(option(Opt.ABORT));
    expect(replies(step)[0]!.type).toBe(Rep.ACK);
    expect(step.outcome).toMatchObject({ kind: 'close', clean: true });
  });

  it('STARTTLS is refused by policy when TLS is off, with data it is invalid', () => {
    expect(replies(started().receive(option(Opt.STARTTLS)))[0]!.type).toBe(Rep.ERR_POLICY);
    expect(replies(started().receive(option(Opt.STARTTLS, Buffer.from('x'))))[0]!.type).toBe(Rep.ERR_INVALID);
  });

  it('unknown options get ERR_UNSUP and negotiation goes on', () => {
    const h = started();
    const r = replies(h.receive(Buffer.concat([option(999, Buffer.from('payload')), option(Opt.EXTENDED_HEADERS), option(Opt.LIST)])));
    expect(r.map((x) => x.type)).toEqual([Rep.ERR_UNSUP, Rep.ERR_UNSUP, Rep.SERVER, Rep.SERVER, Rep.ACK]);
  });

  it('STRUCTURED_REPLY is acknowledged; with data it is invalid', () => {
    expect(replies(started().receive(option(Opt.STRUCTURED_REPLY)))[0]!.type).toBe(Rep.ACK);
    expect(replies(started().receive(option(Opt.STRUCTURED_REPLY, Buffer.from('x'))))[0]!.type).toBe(Rep.ERR_INVALID);
  });

  it('INFO sends EXPORT, requested NAME and DESCRIPTION, BLOCK_SIZE, ACK and keeps negotiating', () => {
    const step = started().receive(option(Opt.INFO, infoData('disk', Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE)));
    expect(step.outcome.kind).toBe('continue');
    const r = replies(step);
    expect(r.map((x) => [x.type, x.type === Rep.INFO ? x.data.readUInt16BE(0) : -1])).toEqual([
      [Rep.INFO, Info.EXPORT],
      [Rep.INFO, Info.NAME],
      [Rep.INFO, Info.DESCRIPTION],
      [Rep.INFO, Info.BLOCK_SIZE],
      [Rep.ACK, -1],
    ]);
    const exp = r[0]!.data;
    expect(exp.readBigUInt64BE(2)).toBe(BigInt(disk.size));
    expect(exp.readUInt16BE(10) & TransmissionFlag.SEND_DF).toBe(0);
    expect(r[1]!.data.toString('utf8', 2)).toBe('disk');
    expect(r[2]!.data.toString('utf8', 2)).toBe('the disk');
    const bs = r[3]!.data;
    expect([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)]).toEqual([1, 4096, 32 << 20]);
  });

  it('INFO/GO for an unknown export is ERR_UNKNOWN', () => {
    expect(replies(started().receive(option(Opt.INFO, infoData('nope'))))[0]!.type).toBe(Rep.ERR_UNKNOWN);
    const step = started().receive(option(Opt.GO, infoData('nope')));
    expect(replies(step)[0]!.type).toBe(Rep.ERR_UNKNOWN);
    expect(step.outcome.kind).toBe('continue');
  });

  it('INFO/GO with inconsistent lengths is ERR_INVALID', () => {
    const bad = infoData('disk', Info.NAME);
    expect(replies(started().receive(option(Opt.GO, bad.subarray(0, bad.length - 1))))[0]!.type).toBe(Rep.ERR_INVALID);
    expect(replies(started().receive(option(Opt.GO, Buffer.concat([u32(1000), Buffer.from('disk'), u16(0)]))))[0]!.type).toBe(Rep.ERR_INVALID);
  });

  it('GO finishes with the export, DF only with structured replies, and hands over trailing bytes', () => {
    const h = started();
    h.receive(option(Opt.STRUCTURED_REPLY));
    const trailing = Buffer.from('request bytes');
    const step = h.receive(Buffer.concat([option(Opt.GO, infoData('disk')), trailing]));
    expect(step.outcome.kind).toBe('ready');
    if (step.outcome.kind !== 'ready') return;
    expect(step.outcome.negotiated.export).toBe(disk);
    expect(step.outcome.negotiated.structuredReplies).toBe(true);
    expect(step.outcome.negotiated.transmissionFlags & TransmissionFlag.SEND_DF).toBe(TransmissionFlag.SEND_DF);
    expect(step.outcome.rest.equals(trailing)).toBe(true);
  });

  it('GO with the empty name selects the default export', () => {
    const step = started().receive(option(Opt.GO, infoData('')));
    expect(step.outcome.kind === 'ready' && step.outcome.negotiated.export).toBe(disk);
  });

  it('EXPORT_NAME answers size and flags, without the 124 zeroes when NO_ZEROES was agreed', () => {
    const step = started().receive(option(Opt.EXPORT_NAME, Buffer.from('disk')));
    expect(step.outcome.kind).toBe('ready');
    expect(step.out[0]!.length).toBe(10);
    expect(step.out[0]!.readBigUInt64BE(0)).toBe(BigInt(disk.size));
    const old = new Handshake(catalog);
    old.receive(u32(1));
    expect(old.receive(option(Opt.EXPORT_NAME, Buffer.from('disk'))).out[0]!.length).toBe(134);
  });

  it('EXPORT_NAME of an unknown export hangs up (the spec allows no error reply)', () => {
    expect(started().receive(option(Opt.EXPORT_NAME, Buffer.from('nope'))).outcome).toMatchObject({ kind: 'close' });
  });

  it('while shutting down, options get ERR_SHUTDOWN and EXPORT_NAME hangs up', () => {
    const h = new Handshake(catalog, () => true);
    h.receive(u32(3));
    expect(replies(h.receive(option(Opt.GO, infoData('disk'))))[0]!.type).toBe(Rep.ERR_SHUTDOWN);
    expect(h.receive(option(Opt.EXPORT_NAME, Buffer.from('disk'))).outcome.kind).toBe('close');
  });
});

describe('STARTTLS', () => {
  function tlsStarted(mode: 'on' | 'require'): Handshake {
    const h = new Handshake(catalog, () => false, mode);
    h.receive(u32(3));
    return h;
  }

  it('with TLS on: ACK, then the connection starts TLS; a second STARTTLS is ERR_INVALID', () => {
    const h = tlsStarted('on');
    const step = h.receive(option(Opt.STARTTLS));
    expect(replies(step).map((r) => [r.opt, r.type])).toEqual([[Opt.STARTTLS, Rep.ACK]]);
    expect(step.outcome.kind).toBe('starttls');
    const again = h.receive(option(Opt.STARTTLS));
    expect(replies(again)[0]!.type).toBe(Rep.ERR_INVALID);
    expect(again.outcome.kind).toBe('continue');
  });

  it('with TLS on, a plain client negotiates as without TLS', () => {
    const step = tlsStarted('on').receive(option(Opt.GO, infoData('disk')));
    expect(step.outcome.kind).toBe('ready');
  });

  it('with TLS required, options before STARTTLS get ERR_TLS_REQD; after it they work', () => {
    const h = tlsStarted('require');
    const r = replies(h.receive(Buffer.concat([option(Opt.LIST), option(Opt.STRUCTURED_REPLY), option(Opt.INFO, infoData('disk')), option(Opt.GO, infoData('disk'))])));
    expect(r.map((x) => x.type)).toEqual([Rep.ERR_TLS_REQD, Rep.ERR_TLS_REQD, Rep.ERR_TLS_REQD, Rep.ERR_TLS_REQD]);
    expect(h.receive(option(Opt.STARTTLS)).outcome.kind).toBe('starttls');
    expect(h.receive(option(Opt.GO, infoData('disk'))).outcome.kind).toBe('ready');
  });

  it('with TLS required, EXPORT_NAME before STARTTLS hangs up (it has no error reply); ABORT still works', () => {
    expect(tlsStarted('require').receive(option(Opt.EXPORT_NAME, Buffer.from('disk'))).outcome).toMatchObject({ kind: 'close', clean: false });
    expect(tlsStarted('require').receive(option(Opt.ABORT)).outcome).toMatchObject({ kind: 'close', clean: true });
  });

  it('bytes behind STARTTLS (sent in the clear, before the ACK) end the handshake unread', () => {
    const step = tlsStarted('require').receive(Buffer.concat([option(Opt.STARTTLS), option(Opt.GO, infoData('disk'))]));
    expect(step.outcome).toMatchObject({ kind: 'close', reason: 'cleartext bytes after STARTTLS' });
    expect(step.out).toEqual([]);
  });

  it('what was negotiated in the clear is forgotten at STARTTLS (structured replies must be asked again)', () => {
    const h = tlsStarted('on');
    h.receive(option(Opt.STRUCTURED_REPLY));
    h.receive(option(Opt.STARTTLS));
    const step = h.receive(option(Opt.GO, infoData('disk')));
    expect(step.outcome).toMatchObject({ kind: 'ready', negotiated: { structuredReplies: false } });
  });
});

describe('meta contexts', () => {
  it('need structured replies first', () => {
    expect(replies(started().receive(option(Opt.SET_META_CONTEXT, metaData('disk', 'base:allocation'))))[0]!.type).toBe(Rep.ERR_INVALID);
  });

  function structured(): Handshake {
    const h = started();
    h.receive(option(Opt.STRUCTURED_REPLY));
    return h;
  }

  it('LIST with no query, or "base:", lists base:allocation with id 0', () => {
    for (const q of [[], ['base:']]) {
      const r = replies(structured().receive(option(Opt.LIST_META_CONTEXT, metaData('disk', ...q))));
      expect(r.map((x) => x.type)).toEqual([Rep.META_CONTEXT, Rep.ACK]);
      expect(r[0]!.data.readUInt32BE(0)).toBe(0);
      expect(r[0]!.data.toString('utf8', 4)).toBe('base:allocation');
    }
  });

  it('unknown contexts match nothing (just ACK)', () => {
    expect(replies(structured().receive(option(Opt.SET_META_CONTEXT, metaData('disk', 'qemu:dirty-bitmap:x')))).map((x) => x.type)).toEqual([Rep.ACK]);
  });

  it('SET selects base:allocation with a nonzero id, and GO carries it', () => {
    const h = structured();
    const r = replies(h.receive(option(Opt.SET_META_CONTEXT, metaData('disk', 'base:allocation'))));
    expect(r.map((x) => x.type)).toEqual([Rep.META_CONTEXT, Rep.ACK]);
    expect(r[0]!.data.readUInt32BE(0)).not.toBe(0);
    const step = h.receive(option(Opt.GO, infoData('disk')));
    expect(step.outcome.kind === 'ready' && step.outcome.negotiated.baseAllocation).toBe(true);
  });

  it('contexts set for one export do not apply to another', () => {
    const h = structured();
    h.receive(option(Opt.SET_META_CONTEXT, metaData('disk', 'base:allocation')));
    const step = h.receive(option(Opt.GO, infoData('other')));
    expect(step.outcome.kind === 'ready' && step.outcome.negotiated.baseAllocation).toBe(false);
  });

  it('unknown export is ERR_UNKNOWN; malformed data is ERR_INVALID', () => {
    expect(replies(structured().receive(option(Opt.SET_META_CONTEXT, metaData('nope', 'base:allocation'))))[0]!.type).toBe(Rep.ERR_UNKNOWN);
    const bad = metaData('disk', 'base:allocation');
    expect(replies(structured().receive(option(Opt.SET_META_CONTEXT, bad.subarray(0, bad.length - 2))))[0]!.type).toBe(Rep.ERR_INVALID);
  });
});

describe('option data parsers', () => {
  it('parseInfoRequest reads name and requests, and rejects short or trailing data', () => {
    expect(parseInfoRequest(infoData('a', 1, 3))).toEqual({ name: 'a', requests: [1, 3] });
    expect(typeof parseInfoRequest(Buffer.alloc(3))).toBe('string');
    expect(typeof parseInfoRequest(Buffer.concat([infoData('a'), Buffer.alloc(1)]))).toBe('string');
  });

  it('parseMetaContextRequest reads queries and rejects overruns', () => {
    expect(parseMetaContextRequest(metaData('d', 'x:1', 'y:2'))).toEqual({ exportName: 'd', queries: ['x:1', 'y:2'] });
    const overrun = Buffer.concat([str32('d'), u32(2), str32('x:1')]);
    expect(typeof parseMetaContextRequest(overrun)).toBe('string');
  });
});
