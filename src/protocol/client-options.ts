// The client side of the handshake, as bytes: options a client sends and the parts of the
// server's option replies it reads. Pure (no sockets): the attach endpoint's node connections
// and the test client both build their handshakes from these.
import { IHAVEOPT, Info, OPTION_REPLY_MAGIC } from './constants.js';
import { ProtocolViolation } from './errors.js';

/** Option reply header: magic, option, reply type, length. */
export const OPTION_REPLY_HEADER_SIZE = 20;

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** One option as the client sends it: IHAVEOPT, option, length, data. */
export function optionBytes(opt: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

/** NBD_OPT_SET_META_CONTEXT / LIST_META_CONTEXT data: export name and queries. */
export function metaContextData(exportName: string, queries: string[]): Buffer {
  const n = Buffer.from(exportName);
  const qs = queries.map((q) => Buffer.concat([u32(Buffer.byteLength(q)), Buffer.from(q)]));
  return Buffer.concat([u32(n.length), n, u32(queries.length), ...qs]);
}

/** NBD_OPT_GO / INFO data: the export name, asking for its name, description and block sizes. */
export function goData(exportName: string): Buffer {
  const n = Buffer.from(exportName);
  return Buffer.concat([u32(n.length), n, Buffer.from([0, 3, Info.NAME >> 8, Info.NAME, Info.DESCRIPTION >> 8, Info.DESCRIPTION, Info.BLOCK_SIZE >> 8, Info.BLOCK_SIZE])]);
}

export interface OptionReplyHeader {
  readonly option: number;
  readonly type: number;
  readonly length: number;
}

/** Reads an option reply header; a wrong magic means the other end does not speak NBD. */
export function decodeOptionReplyHeader(h: Buffer): OptionReplyHeader {
  if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new ProtocolViolation('bad option reply magic');
  return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), length: h.readUInt32BE(16) };
}

export interface ExportInfo {
  size: number;
  flags: number;
  name?: string;
  description?: string;
  blockSizes?: { min: number; preferred: number; max: number };
}

/** What NBD_REP_INFO replies of a GO or INFO said about the export. */
export function parseExportInfo(infos: readonly Buffer[]): ExportInfo {
  const info: ExportInfo = { size: 0, flags: 0 };
  for (const d of infos) {
    if (d.length < 2) throw new ProtocolViolation('NBD_REP_INFO shorter than its type');
    const t = d.readUInt16BE(0);
    if (t === Info.EXPORT) {
      if (d.length !== 12) throw new ProtocolViolation('NBD_INFO_EXPORT of the wrong length');
      info.size = Number(d.readBigUInt64BE(2));
      info.flags = d.readUInt16BE(10);
    } else if (t === Info.NAME) info.name = d.toString('utf8', 2);
    else if (t === Info.DESCRIPTION) info.description = d.toString('utf8', 2);
    else if (t === Info.BLOCK_SIZE && d.length === 14) info.blockSizes = { min: d.readUInt32BE(2), preferred: d.readUInt32BE(6), max: d.readUInt32BE(10) };
  }
  return info;
}
