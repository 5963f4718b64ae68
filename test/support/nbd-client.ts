// A small NBD client for tests (and, later, replication tests): fixed-newstyle handshake,
// structured replies, base:allocation, pipelined requests answered out of order.
// `strict: false` (libnbd's strict mode off) lets tests send requests the spec forbids, so the
// server's validation can be exercised; `rawSocket` gives the bytes-level escape hatch.
import net from 'node:net';
import {
  BASE_ALLOCATION,
  Chunk,
  Cmd,
  CmdFlag,
  IHAVEOPT,
  NBD_MAGIC,
  Opt,
  Rep,
  ReplyFlag,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  TransmissionFlag,
} from '../../src/protocol/constants.js';
import { nbdErrName } from '../../src/protocol/errors.js';
import { encodeRequestHeader } from '../../src/protocol/requests.js';
import { decodeOptionReplyHeader, goData, metaContextData, optionBytes, parseExportInfo, type ExportInfo } from '../../src/protocol/client-options.js';

export { metaContextData, optionBytes, type ExportInfo };

/** An error reply from the server, named as the spec names it (EINVAL, ENOSPC…). */
export class NbdReplyError extends Error {
  constructor(
    readonly errno: number,
    detail = '',
  ) {
    super(`${nbdErrName(errno)}${detail ? `: ${detail}` : ''}`);
    this.name = 'NbdReplyError';
  }
  get code(): string {
    return nbdErrName(this.errno);
  }
}

/** An option the server refused during the handshake. */
export class NbdOptionError extends Error {
  constructor(
    readonly option: number,
    readonly reply: number,
    message: string,
  ) {
    super(`option ${option} refused with reply 0x${reply.toString(16)}${message ? `: ${message}` : ''}`);
    this.name = 'NbdOptionError';
  }
}

export interface ConnectOptions {
  host?: string;
  port: number;
  exportName?: string;
  structured?: boolean;
  baseAllocation?: boolean;
  /** Check requests locally before sending (default true). */
  strict?: boolean;
}

export interface Extent {
  length: number;
  flags: number;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  data?: Buffer;
  extents?: Extent[];
  error?: NbdReplyError;
  resolve: (v: Buffer | Extent[] | undefined) => void;
  reject: (e: Error) => void;
}

/** Reads exact byte counts from a socket (handshake) and then streams replies. */
class ByteReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private closed: Error | undefined;

  constructor(socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.have += c.length;
      this.wake();
    });
    const end = (err?: Error) => {
      this.closed = err ?? new Error('connection closed by server');
      this.wake();
    };
    socket.on('end', () => end());
    socket.on('error', (e) => end(e));
    socket.on('close', () => end());
  }

  get buffered(): number {
    return this.have;
  }

  take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.have = rest.length;
    return out;
  }

  read(n: number): Promise<Buffer> {
    if (this.have >= n) return Promise.resolve(this.take(n));
    if (this.closed) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.have >= w.n) {
      this.waiter = undefined;
      w.resolve(this.take(w.n));
    } else if (this.closed) {
      this.waiter = undefined;
      w.reject(this.closed);
    }
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

export class NbdClient {
  info!: ExportInfo;
  structured = false;
  baseAllocationId: number | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextCookie = 1;
  private replyLoop: Promise<void> | undefined;
  private reader: ByteReader;
  private strict = true;

  private constructor(readonly socket: net.Socket) {
    this.reader = new ByteReader(socket);
  }

  /** Opens a socket and reads the greeting; options are then sent one by one. */
  static async open(port: number, host = '127.0.0.1'): Promise<NbdClient> {
    const socket = net.connect(port, host);
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const c = new NbdClient(socket);
    const greeting = await c.reader.read(18);
    if (greeting.readBigUInt64BE(0) !== NBD_MAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('not an NBD newstyle server');
    socket.write(u32(3)); // FIXED_NEWSTYLE | NO_ZEROES
    return c;
  }

  /** Full handshake: structured replies and base:allocation by default, then GO. */
  static async connect(o: ConnectOptions): Promise<NbdClient> {
    const c = await NbdClient.open(o.port, o.host);
    c.strict = o.strict ?? true;
    const name = o.exportName ?? '';
    if (o.structured ?? true) {
      await c.option(Opt.STRUCTURED_REPLY);
      c.structured = true;
      if (o.baseAllocation ?? true) {
        const replies = await c.option(Opt.SET_META_CONTEXT, metaContextData(name, [BASE_ALLOCATION]));
        const ctx = replies.find((r) => r.type === Rep.META_CONTEXT);
        c.baseAllocationId = ctx?.data.readUInt32BE(0);
      }
    }
    c.info = await c.go(name);
    return c;
  }

  /** Sends an option and collects replies up to the final ACK (or throws on an error reply). */
  async option(opt: number, data?: Buffer): Promise<Array<{ type: number; data: Buffer }>> {
    this.socket.write(optionBytes(opt, data));
    const out: Array<{ type: number; data: Buffer }> = [];
    for (let i = 0; i < 10_000; i++) {
      const h = decodeOptionReplyHeader(await this.reader.read(20));
      const type = h.type;
      const body = await this.reader.read(h.length);
      if (type >= 0x80000000) throw new NbdOptionError(opt, type, body.toString());
      out.push({ type, data: body });
      if (type === Rep.ACK) return out;
    }
    throw new Error('too many option replies');
  }

  /** NBD_OPT_LIST: export names. */
  async list(): Promise<string[]> {
    const replies = await this.option(Opt.LIST);
    return replies.filter((r) => r.type === Rep.SERVER).map((r) => r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0)));
  }

  /** NBD_OPT_INFO (no transition) or GO. */
  async go(name: string, infoOnly = false): Promise<ExportInfo> {
    const replies = await this.option(infoOnly ? Opt.INFO : Opt.GO, goData(name));
    const info = parseExportInfo(replies.filter((x) => x.type === Rep.INFO).map((x) => x.data));
    if (!infoOnly) this.replyLoop = this.readReplies();
    return info;
  }

  can(flag: TransmissionFlag): boolean {
    return (this.info.flags & flag) !== 0;
  }

  /** Sends one request; resolves with READ data, BLOCK_STATUS extents, or undefined. */
  request(type: number, offset: number, length: number, flags = 0, payload?: Buffer): Promise<Buffer | Extent[] | undefined> {
    if (this.strict) this.check(type, offset, length, flags, payload);
    const cookie = this.nextCookie++;
    const header = Buffer.alloc(28);
    encodeRequestHeader(header, 0, { type, flags, offset, length, cookieHi: 0, cookieLo: cookie });
    const p = new Promise<Buffer | Extent[] | undefined>((resolve, reject) => {
      if (type !== Cmd.DISC) this.pending.set(cookie, { type, offset, length, resolve, reject });
      else resolve(undefined);
    });
    this.socket.write(payload ? Buffer.concat([header, payload]) : header);
    return p;
  }

  private check(type: number, offset: number, length: number, flags: number, payload?: Buffer): void {
    if (offset + length > this.info.size) throw new RangeError('request past the end of the export');
    if (type === Cmd.WRITE && payload?.length !== length) throw new RangeError('payload length differs from request length');
    if ((flags & CmdFlag.DF) !== 0 && !this.structured) throw new RangeError('DF needs structured replies');
  }

  read(offset: number, length: number, flags = 0): Promise<Buffer> {
    return this.request(Cmd.READ, offset, length, flags) as Promise<Buffer>;
  }
  async write(offset: number, data: Buffer, flags = 0): Promise<void> {
    await this.request(Cmd.WRITE, offset, data.length, flags, data);
  }
  async flush(): Promise<void> {
    await this.request(Cmd.FLUSH, 0, 0);
  }
  async trim(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(Cmd.TRIM, offset, length, flags);
  }
  async cache(offset: number, length: number): Promise<void> {
    await this.request(Cmd.CACHE, offset, length);
  }
  async zero(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(Cmd.WRITE_ZEROES, offset, length, flags);
  }
  blockStatus(offset: number, length: number, flags = 0): Promise<Extent[]> {
    return this.request(Cmd.BLOCK_STATUS, offset, length, flags) as Promise<Extent[]>;
  }

  /** NBD_CMD_DISC then wait for the server to close. */
  async disconnect(): Promise<void> {
    await this.request(Cmd.DISC, 0, 0);
    this.socket.end();
    await this.replyLoop?.catch(() => undefined);
  }

  close(): void {
    this.socket.destroy();
  }

  private async readReplies(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.reader.read(4)).readUInt32BE(0);
        if (magic === SIMPLE_REPLY_MAGIC) await this.simpleReply();
        else if (magic === STRUCTURED_REPLY_MAGIC) await this.structuredChunk();
        else throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      }
    } catch (err) {
      for (const p of this.pending.values()) p.reject(err as Error);
      this.pending.clear();
    }
  }

  private take(cookie: number): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw new Error(`reply for unknown cookie ${cookie}`);
    return p;
  }

  private async simpleReply(): Promise<void> {
    const h = await this.reader.read(12);
    const err = h.readUInt32BE(0);
    const cookie = h.readUInt32BE(8);
    const p = this.take(cookie);
    this.pending.delete(cookie);
    if (err !== 0) return p.reject(new NbdReplyError(err));
    if (p.type === Cmd.READ) return p.resolve(await this.reader.read(p.length));
    p.resolve(undefined);
  }

  private async structuredChunk(): Promise<void> {
    const h = await this.reader.read(16);
    const flags = h.readUInt16BE(0);
    const type = h.readUInt16BE(2);
    const cookie = h.readUInt32BE(8);
    const len = h.readUInt32BE(12);
    const body = await this.reader.read(len);
    const p = this.take(cookie);
    if (type === Chunk.OFFSET_DATA || type === Chunk.OFFSET_HOLE) {
      p.data ??= Buffer.alloc(p.length);
      const off = Number(body.readBigUInt64BE(0)) - p.offset;
      if (type === Chunk.OFFSET_DATA) body.copy(p.data, off, 8);
      else p.data.fill(0, off, off + body.readUInt32BE(8));
    } else if (type === Chunk.BLOCK_STATUS) {
      p.extents = [];
      for (let i = 4; i < body.length; i += 8) p.extents.push({ length: body.readUInt32BE(i), flags: body.readUInt32BE(i + 4) });
    } else if (type === Chunk.ERROR || type === Chunk.ERROR_OFFSET) {
      const msgLen = body.readUInt16BE(4);
      p.error = new NbdReplyError(body.readUInt32BE(0), body.toString('utf8', 6, 6 + msgLen));
    }
    if ((flags & ReplyFlag.DONE) === 0) return;
    this.pending.delete(cookie);
    if (p.error) p.reject(p.error);
    else if (p.type === Cmd.READ) p.resolve(p.data ?? Buffer.alloc(0));
    else if (p.type === Cmd.BLOCK_STATUS) p.resolve(p.extents);
    else p.resolve(undefined);
  }
}
