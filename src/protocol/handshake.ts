// The fixed-newstyle handshake as a pure state machine: bytes in, reply bytes and an outcome out.
// No sockets here; src/server/connection.ts feeds it and acts on the outcome.
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_ID,
  ClientFlag,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  MAX_OPTION_LENGTH,
  MAX_OPTIONS,
  MAX_STRING,
  NBD_MAGIC,
  Opt,
  OPTION_REPLY_MAGIC,
  Rep,
  TransmissionFlag,
} from './constants.js';

/** What the handshake needs to know of an export. */
export interface ExportDescriptor {
  readonly name: string;
  readonly description: string;
  readonly size: number;
  /** Transmission flags the export supports (HAS_FLAGS included; DF is added when structured replies are on). */
  readonly flags: number;
  readonly minBlockSize: number;
  readonly preferredBlockSize: number;
  readonly maxBlockSize: number;
}

export interface ExportCatalog {
  list(): readonly ExportDescriptor[];
  /** The export called `name`; the empty name selects the default export. */
  find(name: string): ExportDescriptor | undefined;
}

/** The result of a successful negotiation: what the transmission phase runs with. */
export interface Negotiated {
  readonly export: ExportDescriptor;
  readonly structuredReplies: boolean;
  readonly baseAllocation: boolean;
  readonly transmissionFlags: number;
}

/**
 * NBD over TLS, as the spec's server modes: `off` (NOTLS: STARTTLS is refused by policy), `on`
 * (STARTTLS offered, plain clients served too), `require` (FORCEDTLS: every option but STARTTLS
 * and ABORT is answered ERR_TLS_REQD until TLS is up).
 */
export type TlsMode = 'off' | 'on' | 'require';

export type HandshakeOutcome =
  | { readonly kind: 'continue' }
  /** STARTTLS was acknowledged: start TLS as the server; every byte fed from now on must be decrypted. */
  | { readonly kind: 'starttls' }
  | { readonly kind: 'ready'; readonly negotiated: Negotiated; readonly rest: Buffer }
  | { readonly kind: 'close'; readonly reason: string; readonly clean: boolean };

export interface HandshakeStep {
  /** Bytes to send to the client, in order. */
  readonly out: Buffer[];
  readonly outcome: HandshakeOutcome;
}

/**
 * Handshake states. Each waits for a fixed number of bytes:
 *   clientFlags  — 4 bytes of client flags after our greeting
 *   optionHeader — 16 bytes: IHAVEOPT, option, data length
 *   optionData   — the option's data (length from the header)
 *   optionSkip   — the data of an option over MAX_OPTION_LENGTH, dropped as it arrives (never
 *                  buffered), then answered with ERR_TOO_BIG
 *   done         — negotiation finished (transmission) or connection closed; accepts nothing
 */
type State = 'clientFlags' | 'optionHeader' | 'optionData' | 'optionSkip' | 'done';

const CONTINUE: HandshakeOutcome = { kind: 'continue' };

export class Handshake {
  private state: State = 'clientFlags';
  private pending: Buffer = Buffer.alloc(0);
  private noZeroes = false;
  private structured = false;
  private option = 0;
  private optionLength = 0;
  /** Options received so far (at most MAX_OPTIONS). */
  private options = 0;
  /** optionSkip: bytes of the oversize option still to drop. */
  private skipRemaining = 0;
  /** Export name and whether base:allocation was selected by the last SET_META_CONTEXT. */
  private metaExport: string | undefined;
  private metaBaseAllocation = false;
  /** STARTTLS was acknowledged: what follows comes through TLS. */
  private tlsActive = false;

  constructor(
    private readonly catalog: ExportCatalog,
    private readonly isShuttingDown: () => boolean = () => false,
    private readonly tls: TlsMode = 'off',
  ) {}

  /** The server's opening bytes: NBDMAGIC, IHAVEOPT, handshake flags. */
  static greeting(): Buffer {
    const b = Buffer.alloc(18);
    b.writeBigUInt64BE(NBD_MAGIC, 0);
    b.writeBigUInt64BE(IHAVEOPT, 8);
    b.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
    return b;
  }

  receive(chunk: Buffer): HandshakeStep {
    const out: Buffer[] = [];
    // Oversize option data is dropped straight from the chunk, so it is never copied.
    if (this.state === 'optionSkip' && this.pending.length === 0) chunk = this.skip(chunk, out);
    // Copied: chunks may be views of a reused receive buffer. Handshake messages are small.
    this.pending = Buffer.concat([this.pending, chunk]);
    for (;;) {
      if (this.state === 'optionSkip') {
        this.pending = this.skip(this.pending, out);
        if (this.state === 'optionSkip') return { out, outcome: CONTINUE };
      }
      const need = this.bytesNeeded();
      if (need < 0 || this.pending.length < need) return { out, outcome: CONTINUE };
      const data = this.pending.subarray(0, need);
      this.pending = this.pending.subarray(need);
      const outcome = this.step(data, out);
      if (outcome !== CONTINUE) return { out, outcome };
    }
  }

  /** Drops what is left of an oversize option from `b`; once all of it is gone, answers ERR_TOO_BIG. */
  private skip(b: Buffer, out: Buffer[]): Buffer {
    const n = Math.min(this.skipRemaining, b.length);
    this.skipRemaining -= n;
    if (this.skipRemaining === 0) {
      this.state = 'optionHeader';
      out.push(optionReply(this.option, Rep.ERR_TOO_BIG, `option data of ${this.optionLength} bytes is over the limit of ${MAX_OPTION_LENGTH}`));
    }
    return b.subarray(n);
  }

  private bytesNeeded(): number {
    switch (this.state) {
      case 'clientFlags':
        return 4;
      case 'optionHeader':
        return 16;
      case 'optionData':
        return this.optionLength;
      case 'optionSkip':
      case 'done':
        return -1;
    }
  }

  private step(data: Buffer, out: Buffer[]): HandshakeOutcome {
    switch (this.state) {
      case 'clientFlags':
        return this.onClientFlags(data.readUInt32BE(0));
      case 'optionHeader':
        return this.onOptionHeader(data, out);
      case 'optionData':
        this.state = 'optionHeader';
        return this.onOption(this.option, data, out);
      case 'optionSkip':
      case 'done':
        return this.close('data after the handshake ended', false);
    }
  }

  private close(reason: string, clean: boolean): HandshakeOutcome {
    this.state = 'done';
    return { kind: 'close', reason, clean };
  }

  private onClientFlags(flags: number): HandshakeOutcome {
    const known = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;
    if ((flags & ~known) !== 0) return this.close(`unknown client flags 0x${flags.toString(16)}`, false);
    this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
    this.state = 'optionHeader';
    return CONTINUE;
  }

  private onOptionHeader(h: Buffer, out: Buffer[]): HandshakeOutcome {
    if (h.readBigUInt64BE(0) !== IHAVEOPT) return this.close('bad option magic', false);
    this.option = h.readUInt32BE(8);
    this.optionLength = h.readUInt32BE(12);
    if (++this.options > MAX_OPTIONS) {
      out.push(optionReply(this.option, Rep.ERR_TOO_BIG, `more than ${MAX_OPTIONS} options in one handshake`));
      return this.close(`more than ${MAX_OPTIONS} options in one handshake`, false);
    }
    if (this.optionLength > MAX_OPTION_LENGTH) {
      // EXPORT_NAME has no error reply: the spec's only answer is to hang up.
      if (this.option === Opt.EXPORT_NAME) return this.close(`EXPORT_NAME of ${this.optionLength} bytes (limit ${MAX_OPTION_LENGTH})`, false);
      this.skipRemaining = this.optionLength;
      this.state = 'optionSkip';
      return CONTINUE;
    }
    this.state = 'optionData';
    return CONTINUE;
  }

  /** Before TLS on a server that requires it, only STARTTLS and ABORT get anything but ERR_TLS_REQD. */
  private get tlsRequired(): boolean {
    return this.tls === 'require' && !this.tlsActive;
  }

  private onOption(opt: number, data: Buffer, out: Buffer[]): HandshakeOutcome {
    if (opt === Opt.EXPORT_NAME) {
      // It cannot be answered with an error: the spec's only answer is to hang up.
      if (this.tlsRequired) return this.close('EXPORT_NAME before STARTTLS, and this server requires TLS', false);
      return this.onExportName(data, out);
    }
    if (opt === Opt.ABORT) {
      out.push(optionReply(opt, Rep.ACK));
      return this.close('client aborted the handshake', true);
    }
    if (this.isShuttingDown()) {
      out.push(optionReply(opt, Rep.ERR_SHUTDOWN, 'server is shutting down'));
      return CONTINUE;
    }
    if (opt === Opt.STARTTLS) return this.onStartTls(data, out);
    if (this.tlsRequired) {
      out.push(optionReply(opt, Rep.ERR_TLS_REQD, 'this server requires TLS: send STARTTLS first'));
      return CONTINUE;
    }
    switch (opt) {
      case Opt.LIST:
        this.onList(data, out);
        return CONTINUE;
      case Opt.INFO:
      case Opt.GO:
        return this.onInfoOrGo(opt, data, out);
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) {
          out.push(optionReply(opt, Rep.ERR_INVALID, 'STRUCTURED_REPLY takes no data'));
        } else {
          this.structured = true;
          out.push(optionReply(opt, Rep.ACK));
        }
        return CONTINUE;
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        this.onMetaContext(opt, data, out);
        return CONTINUE;
      default:
        out.push(optionReply(opt, Rep.ERR_UNSUP, `option ${opt} is not supported`));
        return CONTINUE;
    }
  }

  private onStartTls(data: Buffer, out: Buffer[]): HandshakeOutcome {
    if (data.length !== 0) {
      out.push(optionReply(Opt.STARTTLS, Rep.ERR_INVALID, 'STARTTLS takes no data'));
      return CONTINUE;
    }
    if (this.tls === 'off') {
      out.push(optionReply(Opt.STARTTLS, Rep.ERR_POLICY, 'TLS is not configured on this server'));
      return CONTINUE;
    }
    if (this.tlsActive) {
      out.push(optionReply(Opt.STARTTLS, Rep.ERR_INVALID, 'TLS is already active'));
      return CONTINUE;
    }
    // A client waits for the ACK before it says anything more, so bytes already here were sent in
    // the clear by someone else: they must never be read as options of the encrypted session.
    if (this.pending.length > 0) return this.close('cleartext bytes after STARTTLS', false);
    // What was negotiated in the clear may have been injected (CVE-2021-3716 in nbdkit): forget it.
    this.structured = false;
    this.metaExport = undefined;
    this.metaBaseAllocation = false;
    this.tlsActive = true;
    out.push(optionReply(Opt.STARTTLS, Rep.ACK));
    return { kind: 'starttls' };
  }

  private onExportName(data: Buffer, out: Buffer[]): HandshakeOutcome {
    const name = data.toString('utf8');
    // EXPORT_NAME cannot carry an error message: the spec's only answer is to hang up.
    const exp = this.isShuttingDown() ? undefined : this.catalog.find(name);
    if (!exp) return this.close(this.isShuttingDown() ? 'shutting down' : `unknown export "${name}"`, false);
    const negotiated = this.finish(exp);
    const reply = Buffer.alloc(this.noZeroes ? 10 : 134);
    reply.writeBigUInt64BE(BigInt(exp.size), 0);
    reply.writeUInt16BE(negotiated.transmissionFlags, 8);
    out.push(reply);
    return { kind: 'ready', negotiated, rest: this.takeRest() };
  }

  /** Bytes the client sent after the final option: the first transmission requests. */
  private takeRest(): Buffer {
    const rest = this.pending;
    this.pending = Buffer.alloc(0);
    return rest;
  }

  private onList(data: Buffer, out: Buffer[]): void {
    if (data.length !== 0) {
      out.push(optionReply(Opt.LIST, Rep.ERR_INVALID, 'LIST takes no data'));
      return;
    }
    for (const exp of this.catalog.list()) {
      const name = Buffer.from(exp.name, 'utf8');
      const desc = Buffer.from(exp.description, 'utf8');
      const body = Buffer.alloc(4 + name.length + desc.length);
      body.writeUInt32BE(name.length, 0);
      name.copy(body, 4);
      desc.copy(body, 4 + name.length);
      out.push(optionReply(Opt.LIST, Rep.SERVER, body));
    }
    out.push(optionReply(Opt.LIST, Rep.ACK));
  }

  private onInfoOrGo(opt: Opt, data: Buffer, out: Buffer[]): HandshakeOutcome {
    const parsed = parseInfoRequest(data);
    if (typeof parsed === 'string') {
      out.push(optionReply(opt, Rep.ERR_INVALID, parsed));
      return CONTINUE;
    }
    const exp = this.catalog.find(parsed.name);
    if (!exp) {
      out.push(optionReply(opt, Rep.ERR_UNKNOWN, `unknown export "${parsed.name}"`));
      return CONTINUE;
    }
    const flags = this.transmissionFlags(exp);
    const info = Buffer.alloc(12);
    info.writeUInt16BE(Info.EXPORT, 0);
    info.writeBigUInt64BE(BigInt(exp.size), 2);
    info.writeUInt16BE(flags, 10);
    out.push(optionReply(opt, Rep.INFO, info));
    for (const req of new Set(parsed.requests)) {
      if (req === Info.NAME) out.push(optionReply(opt, Rep.INFO, infoString(Info.NAME, exp.name)));
      if (req === Info.DESCRIPTION && exp.description) {
        out.push(optionReply(opt, Rep.INFO, infoString(Info.DESCRIPTION, exp.description)));
      }
    }
    // Block sizes are always sent: our minimum is 1, so a client that did not ask loses nothing.
    const bs = Buffer.alloc(14);
    bs.writeUInt16BE(Info.BLOCK_SIZE, 0);
    bs.writeUInt32BE(exp.minBlockSize, 2);
    bs.writeUInt32BE(exp.preferredBlockSize, 6);
    bs.writeUInt32BE(exp.maxBlockSize, 10);
    out.push(optionReply(opt, Rep.INFO, bs));
    out.push(optionReply(opt, Rep.ACK));
    if (opt === Opt.INFO) return CONTINUE;
    return { kind: 'ready', negotiated: this.finish(exp), rest: this.takeRest() };
  }

  private onMetaContext(opt: Opt, data: Buffer, out: Buffer[]): void {
    if (!this.structured) {
      out.push(optionReply(opt, Rep.ERR_INVALID, 'negotiate STRUCTURED_REPLY first'));
      return;
    }
    const parsed = parseMetaContextRequest(data);
    if (typeof parsed === 'string') {
      out.push(optionReply(opt, Rep.ERR_INVALID, parsed));
      return;
    }
    if (!this.catalog.find(parsed.exportName)) {
      out.push(optionReply(opt, Rep.ERR_UNKNOWN, `unknown export "${parsed.exportName}"`));
      return;
    }
    const isList = opt === Opt.LIST_META_CONTEXT;
    // LIST with no query lists everything; "base:" alone lists the whole namespace.
    const matches =
      (isList && parsed.queries.length === 0) ||
      parsed.queries.some((q) => q === BASE_ALLOCATION || (isList && q === 'base:'));
    if (matches) {
      const name = Buffer.from(BASE_ALLOCATION, 'utf8');
      const body = Buffer.alloc(4 + name.length);
      body.writeUInt32BE(isList ? 0 : BASE_ALLOCATION_ID, 0);
      name.copy(body, 4);
      out.push(optionReply(opt, Rep.META_CONTEXT, body));
    }
    if (!isList) {
      this.metaExport = parsed.exportName;
      this.metaBaseAllocation = matches;
    }
    out.push(optionReply(opt, Rep.ACK));
  }

  private transmissionFlags(exp: ExportDescriptor): number {
    return this.structured ? exp.flags | TransmissionFlag.SEND_DF : exp.flags & ~TransmissionFlag.SEND_DF;
  }

  private finish(exp: ExportDescriptor): Negotiated {
    this.state = 'done';
    return {
      export: exp,
      structuredReplies: this.structured,
      // Contexts chosen for another export do not carry over to this one.
      baseAllocation: this.structured && this.metaBaseAllocation && this.catalog.find(this.metaExport ?? '') === exp,
      transmissionFlags: this.transmissionFlags(exp),
    };
  }
}

/** One option reply: magic, option, reply type, data (a Buffer, or a message string for errors). */
export function optionReply(opt: number, type: Rep, data?: Buffer | string): Buffer {
  const body = typeof data === 'string' ? Buffer.from(data, 'utf8') : (data ?? Buffer.alloc(0));
  const b = Buffer.allocUnsafe(20 + body.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(body.length, 16);
  body.copy(b, 20);
  return b;
}

function infoString(type: Info, s: string): Buffer {
  const str = Buffer.from(s, 'utf8');
  const b = Buffer.alloc(2 + str.length);
  b.writeUInt16BE(type, 0);
  str.copy(b, 2);
  return b;
}

/** INFO/GO data: u32 name length, name, u16 count, count × u16 info types. A string is an error. */
export function parseInfoRequest(data: Buffer): { name: string; requests: number[] } | string {
  if (data.length < 6) return 'INFO/GO data too short';
  const nameLen = data.readUInt32BE(0);
  if (nameLen > MAX_STRING || 4 + nameLen + 2 > data.length) return 'INFO/GO export name length out of range';
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 4 + nameLen + 2 + 2 * count) return 'INFO/GO information request count does not match the data length';
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(4 + nameLen + 2 + 2 * i));
  return { name, requests };
}

/** LIST/SET_META_CONTEXT data: u32 name length, name, u32 query count, queries (u32 length, string). */
export function parseMetaContextRequest(data: Buffer): { exportName: string; queries: string[] } | string {
  if (data.length < 8) return 'meta context data too short';
  const nameLen = data.readUInt32BE(0);
  if (nameLen > MAX_STRING || 4 + nameLen + 4 > data.length) return 'meta context export name length out of range';
  const exportName = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt32BE(4 + nameLen);
  const queries: string[] = [];
  let off = 8 + nameLen;
  for (let i = 0; i < count; i++) {
    if (off + 4 > data.length) return 'meta context query count does not match the data length';
    const len = data.readUInt32BE(off);
    if (len > MAX_STRING || off + 4 + len > data.length) return 'meta context query length out of range';
    queries.push(data.toString('utf8', off + 4, off + 4 + len));
    off += 4 + len;
  }
  if (off !== data.length) return 'trailing bytes after meta context queries';
  return { exportName, queries };
}
