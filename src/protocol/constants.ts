// NBD wire constants, as `doc/proto.md` of the NetworkBlockDevice/nbd repository names them.
// Numbers only: no behaviour lives here.

/** "NBDMAGIC": first 8 bytes the server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle marker sent by the server, and the prefix of every client option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Prefix of every option reply. */
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_HEADER_SIZE = 16;
export const STRUCTURED_REPLY_HEADER_SIZE = 20;

/** Largest READ/WRITE payload we advertise (the maximum block size clients should keep to). */
export const MAX_PAYLOAD = 32 * 1024 * 1024;
/**
 * Largest READ/WRITE payload we serve. Some clients ignore the advertised maximum
 * (nbd-tester-client's integrityhuge sends ~47.5 MiB); nbdkit serves up to 64 MiB, so do we.
 * Longer ones get EINVAL (EOVERFLOW for a READ with DF) and the connection stays.
 */
export const MAX_REQUEST = 64 * 1024 * 1024;
/** Longest option payload we buffer during the handshake; longer ones are skipped with ERR_TOO_BIG. */
export const MAX_OPTION_LENGTH = 64 * 1024;
/** Options one handshake may send (as nbdkit): the next one gets ERR_TOO_BIG and a hang-up. */
export const MAX_OPTIONS = 32;
/** Longest export name, description or metadata-context query the spec lets us insist on. */
export const MAX_STRING = 4096;

export const enum HandshakeFlag {
  FIXED_NEWSTYLE = 1 << 0,
  NO_ZEROES = 1 << 1,
}

export const enum ClientFlag {
  FIXED_NEWSTYLE = 1 << 0,
  NO_ZEROES = 1 << 1,
}

export const enum TransmissionFlag {
  HAS_FLAGS = 1 << 0,
  READ_ONLY = 1 << 1,
  SEND_FLUSH = 1 << 2,
  SEND_FUA = 1 << 3,
  ROTATIONAL = 1 << 4,
  SEND_TRIM = 1 << 5,
  SEND_WRITE_ZEROES = 1 << 6,
  SEND_DF = 1 << 7,
  CAN_MULTI_CONN = 1 << 8,
  SEND_RESIZE = 1 << 9,
  SEND_CACHE = 1 << 10,
  SEND_FAST_ZERO = 1 << 11,
}

export const enum Opt {
  EXPORT_NAME = 1,
  ABORT = 2,
  LIST = 3,
  PEEK_EXPORT = 4,
  STARTTLS = 5,
  INFO = 6,
  GO = 7,
  STRUCTURED_REPLY = 8,
  LIST_META_CONTEXT = 9,
  SET_META_CONTEXT = 10,
  EXTENDED_HEADERS = 11,
}

const ERR = 0x80000000;
export const enum Rep {
  ACK = 1,
  SERVER = 2,
  INFO = 3,
  META_CONTEXT = 4,
  ERR_UNSUP = ERR + 1,
  ERR_POLICY = ERR + 2,
  ERR_INVALID = ERR + 3,
  ERR_PLATFORM = ERR + 4,
  ERR_TLS_REQD = ERR + 5,
  ERR_UNKNOWN = ERR + 6,
  ERR_SHUTDOWN = ERR + 7,
  ERR_BLOCK_SIZE_REQD = ERR + 8,
  ERR_TOO_BIG = ERR + 9,
}

export const enum Info {
  EXPORT = 0,
  NAME = 1,
  DESCRIPTION = 2,
  BLOCK_SIZE = 3,
}

export const enum Cmd {
  READ = 0,
  WRITE = 1,
  DISC = 2,
  FLUSH = 3,
  TRIM = 4,
  CACHE = 5,
  WRITE_ZEROES = 6,
  BLOCK_STATUS = 7,
}

export const enum CmdFlag {
  FUA = 1 << 0,
  NO_HOLE = 1 << 1,
  DF = 1 << 2,
  REQ_ONE = 1 << 3,
  FAST_ZERO = 1 << 4,
}

export const enum ReplyFlag {
  DONE = 1 << 0,
}

export const enum Chunk {
  NONE = 0,
  OFFSET_DATA = 1,
  OFFSET_HOLE = 2,
  BLOCK_STATUS = 5,
  ERROR = (1 << 15) + 1,
  ERROR_OFFSET = (1 << 15) + 2,
}

/** NBD error values carried in replies (Linux errno numbers, as the spec fixes them). */
export const enum NbdErr {
  OK = 0,
  EPERM = 1,
  EIO = 5,
  ENOMEM = 12,
  EINVAL = 22,
  ENOSPC = 28,
  EOVERFLOW = 75,
  ENOTSUP = 95,
  ESHUTDOWN = 108,
}

/** base:allocation extent flags. */
export const enum AllocState {
  DATA = 0,
  HOLE = 1 << 0,
  ZERO = 1 << 1,
}

export const BASE_ALLOCATION = 'base:allocation';
/** The id we hand out for base:allocation in NBD_REP_META_CONTEXT. */
export const BASE_ALLOCATION_ID = 1;
