// A small NBD client for tests (and, later, replication tests): fixed-newstyle handshake,
// structured replies, base:allocation, pipelined requests answered out of order (replies decoded
// by the protocol's ReplyDecoder, the one nbd-mirror attach uses).
// `strict: false` (libnbd's strict mode off) lets tests send requests the spec forbids, so the
// server's validation can be exercised; `rawSocket` gives the bytes-level escape hatch.
import net from 'node:net';
import {
  BASE_ALLOCATION,
  Cmd,
  CmdFlag,
  IHAVEOPT,
  NBD_MAGIC,
  Opt,
  Rep,
  TransmissionFlag,
} from '../../src/protocol/constants.js';
import { nbdErrName } from '../../src/protocol/errors.js';
import { encodeRequestHeader } from '../../src/protocol/requests.js';
import { ReplyDecoder, type ReplyTarget } from '../../src/protocol/reply-decoder.js';
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

/** A request in flight: what the ReplyDecoder needs, and where its answer goes. */
class Pending implements ReplyTarget {
  private buf: Buffer | undefined;
  extents: Extent[] | undefined;
  error: NbdReplyError | undefined;
  constructor(
    readonly type: number,
    readonly offset: number,
    readonly length: number,
    readonly resolve: (v: Buffer | Extent[] | undefined) => void,
    readonly reject: (e: Error) => void,
  ) {}
  /** READ data, allocated when the first data arrives (a refused 4 GiB READ allocates nothing). */
  get data(): Buffer | undefined {
    if (this.type !== Cmd.READ) return undefined;
    return (this.buf ??= Buffer.alloc(this.length));
  }
  settle(): void {
    if (this.error) this.reject(this.error);
    else if (this.type === Cmd.READ) this.resolve(this.buf ?? Buffer.alloc(0));
    else if (this.type === Cmd.BLOCK_STATUS) this.resolve(this.extents);
    else this.resolve(undefined);
  }
}

/** Reads exact byte counts from a socket (handshake) and then streams replies. */
class ByteReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private closed: Error | undefined;

  /** After the handshake: where every byte goes, and who hears of the end. */
  private sink: { feed: (b: Buffer) => void; end: (e: Error) => void } | undefined;

  constructor(socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      if (this.sink) return this.sink.feed(c);
      this.chunks.push(c);
      this.have += c.length;
      this.wake();
    });
    const end = (err?: Error) => {
      this.closed ??= err ?? new Error('connection closed by server');
      this.wake();
      this.sink?.end(this.closed);
    };
    socket.on('end', () => end());
    socket.on('error', (e) => end(e));
    socket.on('close', () => end());
  }

  /** From now on every byte goes to `feed` (what is buffered first); `end` hears of the close. */
  handOver(feed: (b: Buffer) => void, end: (e: Error) => void): void {
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.have = 0;
    this.sink = { feed, end };
    if (rest.length > 0) feed(rest);
    if (this.closed) end(this.closed);
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
      if (type !== Cmd.DISC) this.pending.set(cookie, new Pending(type, offset, length, resolve, reject));
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

  /** Replies from here on, decoded by the protocol's ReplyDecoder (the attach endpoint's own). */
  private readReplies(): Promise<void> {
    const pending = this.pending;
    const failAll = (err: Error) => {
      for (const p of pending.values()) p.reject(err);
      pending.clear();
    };
    const decoder = new ReplyDecoder({
      request: (cookie) => pending.get(cookie),
      onExtents: (cookie, body) => {
        const p = pending.get(cookie)!;
        p.extents = [];
        for (let i = 4; i < body.length; i += 8) p.extents.push({ length: body.readUInt32BE(i), flags: body.readUInt32BE(i + 4) });
      },
      onError: (cookie, errno, message) => void (pending.get(cookie)!.error = new NbdReplyError(errno, message)),
      onDone: (cookie) => {
        const p = pending.get(cookie)!;
        pending.delete(cookie);
        p.settle();
      },
    });
    return new Promise((resolve) => {
      this.reader.handOver(
        (bytes) => {
          try {
            decoder.feed(bytes);
          } catch (err) {
            failAll(err as Error);
            this.socket.destroy();
          }
        },
        (err) => {
          failAll(err);
          resolve();
        },
      );
    });
  }
}
