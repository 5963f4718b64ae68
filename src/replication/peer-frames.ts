// The peer receiver's table (DRBD's `drbd_cmd_handler`): for every frame type the body sizes it
// may have, the range it names, what else its body must satisfy and when it is legal. It is
// checked in two places only, both before any handler runs: the header when it arrives (type,
// body size, link phase — before a byte of the body is buffered) and the body of a volume's
// frame before the volume acts on it (volume index, range inside the volume, body shape, the
// volume's state). A frame outside the table is a ProtocolViolation: the link drops with the
// reason logged, and no data and no dirty bit has changed. Handlers may then assume what the
// table says. Pure: no I/O, no state of its own.
import { MAX_REQUEST } from '../protocol/constants.js';
import { ProtocolViolation } from '../protocol/errors.js';
import {
  decodeHoles,
  HOLE_RUN_SIZE,
  HOLES_FIXED_SIZE,
  MAX_HOLE_RUNS,
  MAX_HOLES_RANGE,
  MAX_RESYNC_RANGE,
  PEER_READ_DATA_HEADER_SIZE,
  PeerMsg,
  RANGE_SIZE,
  RS_DATA_HEADER_SIZE,
  WRITE_HEADER_SIZE,
  type FrameHeader,
} from './peer-protocol.js';

/** Largest HELLO body: checked before it is buffered or parsed (a HELLO is a few hundred bytes per volume). */
export const MAX_HELLO = 64 * 1024;
/** Largest VOLUME_OP body (a short JSON object), and of the reason a VOLUME_OP_ACK carries. */
export const MAX_VOLUME_OP = 1024;
/** Largest ERROR body (a reason for an operator to read). */
const MAX_ERROR = 4096;
/** Largest range one digest request or reply covers (checksum resync, verify). */
export const MAX_COMPARE_RANGE = 1024 * 1024;
/** Dirty runs per BITMAP_RUNS frame (the sender splits longer lists). */
export const MAX_RUNS_PER_FRAME = 4096;
/** Smallest block a digest list may count in: bounds digest bodies before the volume's block size is known. */
const MIN_BLOCK = 512;

/** Link phase: before the peer's HELLO was accepted, or after. */
export type LinkPhase = 'handshake' | 'connected';

/** What a volume is doing, as far as the legality of a peer frame goes. */
export interface VolumePhase {
  /** This node's role in a running resync, if any. */
  readonly resync: 'source' | 'target' | undefined;
  /** In a resync: the peer's dirty runs (its frame flagged last) have arrived. */
  readonly peerRunsIn: boolean;
}

/** A volume's facts a frame body is checked against. */
export interface VolumeFacts {
  readonly index: number;
  readonly size: number;
  /** Dirty-bitmap grain = digest block size. */
  readonly blockSize: number;
  readonly phase: VolumePhase;
}

interface Range {
  offset: number;
  length: number;
}

interface FrameRule {
  readonly name: string;
  readonly minBody: number;
  readonly maxBody: number;
  /** handshake: HELLO; link: the link's own frames once connected; volume: routed to the volume named by the id's top 16 bits. */
  readonly scope: 'handshake' | 'link' | 'any' | 'volume';
  /**
   * The range the body names: a range header (volume u32, offset u64, length u32) or a WRITE
   * header (the data's length). `answerReads`: the answer reads the range into a buffer of its
   * length, which the request holds while in work (see workCost).
   */
  readonly range?: { readonly kind: 'range' | 'write'; readonly maxLength: number; readonly blocks?: boolean; readonly answerReads?: true };
  /** Why the rest of the body is malformed, or undefined. */
  readonly body?: (body: Buffer, r: Range, v: VolumeFacts) => string | undefined;
  /** Why the frame is not legal in the volume's present state, or undefined. */
  readonly legal?: (p: VolumePhase, flags: number) => string | undefined;
}

const digestBytes = (r: Range, v: VolumeFacts): number => (r.length / v.blockSize) * 8;
const digestsMatch = (body: Buffer, r: Range, v: VolumeFacts): string | undefined =>
  body.length === RANGE_SIZE + digestBytes(r, v) ? undefined : `${body.length - RANGE_SIZE} bytes of digests for ${r.length} bytes`;
const onlySource = (p: VolumePhase): string | undefined => (p.resync === 'source' && p.peerRunsIn ? undefined : 'only a resync source that has the target\'s dirty runs takes it');
const onlyTarget = (p: VolumePhase): string | undefined => (p.resync === 'target' ? undefined : 'only a resync target takes it');
const noResync = (p: VolumePhase): string | undefined => (p.resync === undefined ? undefined : 'not during a resync');

/** The table. A type missing from it (HELLO_ACK, anything unknown) is refused. */
export const FRAME_RULES: ReadonlyMap<number, FrameRule> = new Map<number, FrameRule>([
  [PeerMsg.HELLO, { name: 'HELLO', minBody: 2, maxBody: MAX_HELLO, scope: 'handshake' }],
  [PeerMsg.ERROR, { name: 'ERROR', minBody: 0, maxBody: MAX_ERROR, scope: 'any' }],
  [PeerMsg.PING, { name: 'PING', minBody: 0, maxBody: 0, scope: 'link' }],
  [PeerMsg.PONG, { name: 'PONG', minBody: 0, maxBody: 0, scope: 'link' }],
  [PeerMsg.LEAVING, { name: 'LEAVING', minBody: 0, maxBody: 0, scope: 'link' }],
  // Volumes changed online (volume-ops.ts): no volume index (the volume may not exist yet); the
  // body's shape is checked as it is parsed (decodeVolumeOp, a violation), whether the change is
  // legal now by the receiver (refused with a VOLUME_OP_ACK, nothing changed: a concurrent
  // change, an existing or missing name, a volume resyncing or with clients).
  [PeerMsg.VOLUME_OP, { name: 'VOLUME_OP', minBody: 2, maxBody: MAX_VOLUME_OP, scope: 'link' }],
  [PeerMsg.VOLUME_OP_ACK, { name: 'VOLUME_OP_ACK', minBody: 4, maxBody: 4 + MAX_VOLUME_OP, scope: 'link' }],
  [PeerMsg.WRITE, { name: 'WRITE', minBody: WRITE_HEADER_SIZE, maxBody: WRITE_HEADER_SIZE + MAX_REQUEST, scope: 'volume', range: { kind: 'write', maxLength: MAX_REQUEST } }],
  [PeerMsg.WRITE_ACK, { name: 'WRITE_ACK', minBody: 4, maxBody: 4, scope: 'volume' }],
  [PeerMsg.FLUSH, { name: 'FLUSH', minBody: 0, maxBody: 0, scope: 'volume' }],
  [PeerMsg.FLUSH_ACK, { name: 'FLUSH_ACK', minBody: 4, maxBody: 4, scope: 'volume' }],
  [PeerMsg.TRIM, { name: 'TRIM', minBody: RANGE_SIZE + 4, maxBody: RANGE_SIZE + 4, scope: 'volume', range: { kind: 'range', maxLength: 2 ** 32 - 1 } }],
  [PeerMsg.ZERO, { name: 'ZERO', minBody: RANGE_SIZE + 4, maxBody: RANGE_SIZE + 4, scope: 'volume', range: { kind: 'range', maxLength: 2 ** 32 - 1 } }],
  [
    PeerMsg.BITMAP_RUNS,
    {
      name: 'BITMAP_RUNS',
      minBody: 4,
      maxBody: 4 + 16 * MAX_RUNS_PER_FRAME,
      scope: 'volume',
      body: bitmapRuns,
      // During a resync: the peer's runs, once, before anything else of the resync. Outside one:
      // only ranges a verify found (never flagged last), which set bits and clear none.
      legal: (p, flags) => {
        if (p.resync) return p.peerRunsIn ? 'the peer\'s dirty runs for this resync arrived already' : undefined;
        return flags & 1 ? 'a resync\'s dirty runs while no resync runs' : undefined;
      },
    },
  ],
  [PeerMsg.RS_REQUEST, { name: 'RS_REQUEST', minBody: RANGE_SIZE, maxBody: RANGE_SIZE, scope: 'volume', range: { kind: 'range', maxLength: MAX_RESYNC_RANGE, answerReads: true }, legal: onlySource }],
  [
    PeerMsg.RS_DATA,
    {
      name: 'RS_DATA',
      minBody: RS_DATA_HEADER_SIZE,
      maxBody: RS_DATA_HEADER_SIZE + MAX_RESYNC_RANGE,
      scope: 'volume',
      range: { kind: 'range', maxLength: MAX_RESYNC_RANGE },
      // The data of the whole range, or none at all (RS_DATA_ZERO: the range is zeros).
      body: (b, r) => (b.length === RS_DATA_HEADER_SIZE + r.length || b.length === RS_DATA_HEADER_SIZE ? undefined : `${b.length - RS_DATA_HEADER_SIZE} bytes of data for ${r.length}`),
      legal: onlyTarget,
    },
  ],
  // The answer comes from the allocation map (no data read): its cost is its body.
  [PeerMsg.RS_HOLES_REQUEST, { name: 'RS_HOLES_REQUEST', minBody: RANGE_SIZE, maxBody: RANGE_SIZE, scope: 'volume', range: { kind: 'range', maxLength: MAX_HOLES_RANGE }, body: notEmpty, legal: onlySource }],
  // Whether it answers the request the target has open, for the range asked, and its digest, the
  // target checks (a damaged one is asked for again, as damaged data is).
  [
    PeerMsg.RS_HOLES,
    { name: 'RS_HOLES', minBody: HOLES_FIXED_SIZE, maxBody: HOLES_FIXED_SIZE + HOLE_RUN_SIZE * MAX_HOLE_RUNS, scope: 'volume', range: { kind: 'range', maxLength: MAX_HOLES_RANGE }, body: holeRuns, legal: onlyTarget },
  ],
  // Up to a hole walk's span: the dirty grains of one of the source's holes are acknowledged at
  // once (1 MiB acks made a 64 GiB mostly empty volume's sync cost 65,536 frames).
  [PeerMsg.RS_ACK, { name: 'RS_ACK', minBody: RANGE_SIZE, maxBody: RANGE_SIZE, scope: 'volume', range: { kind: 'range', maxLength: MAX_HOLES_RANGE }, legal: onlySource }],
  [PeerMsg.RS_DONE, { name: 'RS_DONE', minBody: RANGE_SIZE, maxBody: RANGE_SIZE, scope: 'volume', range: { kind: 'range', maxLength: 0 }, legal: onlySource }],
  // Any time: a read changes nothing, and the peer may lack a range outside a resync too (its
  // disk failed, or a resync into it was cut short).
  [PeerMsg.PEER_READ, { name: 'PEER_READ', minBody: RANGE_SIZE, maxBody: RANGE_SIZE, scope: 'volume', range: { kind: 'range', maxLength: MAX_REQUEST, answerReads: true } }],
  [
    PeerMsg.PEER_READ_DATA,
    {
      name: 'PEER_READ_DATA',
      minBody: PEER_READ_DATA_HEADER_SIZE,
      maxBody: PEER_READ_DATA_HEADER_SIZE + MAX_REQUEST,
      scope: 'volume',
      range: { kind: 'range', maxLength: MAX_REQUEST },
      body: (b, r) => {
        const data = b.length - PEER_READ_DATA_HEADER_SIZE;
        const ok = b.readUInt32BE(RANGE_SIZE) === 0 ? data === r.length : data === 0;
        return ok ? undefined : `${data} bytes of data for ${r.length} with status ${b.readUInt32BE(RANGE_SIZE)}`;
      },
    },
  ],
  [
    PeerMsg.RS_CSUM_REQUEST,
    { name: 'RS_CSUM_REQUEST', minBody: RANGE_SIZE, maxBody: RANGE_SIZE + (MAX_COMPARE_RANGE / MIN_BLOCK) * 8, scope: 'volume', range: { kind: 'range', maxLength: MAX_COMPARE_RANGE, blocks: true, answerReads: true }, body: digestsMatch, legal: onlySource },
  ],
  [
    PeerMsg.RS_DIFF,
    // Its runs are checked against its range as it is parsed (BlockComparer.decodeDiff).
    { name: 'RS_DIFF', minBody: RANGE_SIZE + 12, maxBody: RANGE_SIZE + 12 + (MAX_COMPARE_RANGE / MIN_BLOCK) * 8 + MAX_COMPARE_RANGE, scope: 'volume', range: { kind: 'range', maxLength: MAX_COMPARE_RANGE, blocks: true }, legal: onlyTarget },
  ],
  [PeerMsg.VERIFY_REQUEST, { name: 'VERIFY_REQUEST', minBody: RANGE_SIZE, maxBody: RANGE_SIZE, scope: 'volume', range: { kind: 'range', maxLength: MAX_COMPARE_RANGE, blocks: true, answerReads: true }, legal: noResync }],
  [
    PeerMsg.VERIFY_DIGESTS,
    { name: 'VERIFY_DIGESTS', minBody: RANGE_SIZE, maxBody: RANGE_SIZE + (MAX_COMPARE_RANGE / MIN_BLOCK) * 8, scope: 'volume', range: { kind: 'range', maxLength: MAX_COMPARE_RANGE, blocks: true }, body: digestsMatch },
  ],
  // A verify's hole walk: the request as RS_HOLES_REQUEST (answered from the allocation map), but
  // from a verifier, so only outside a resync; the answer, an RS_HOLES body, may come any time
  // (a verify cut short still gets its answers; one for no open request is dropped).
  [PeerMsg.VERIFY_HOLES_REQUEST, { name: 'VERIFY_HOLES_REQUEST', minBody: RANGE_SIZE, maxBody: RANGE_SIZE, scope: 'volume', range: { kind: 'range', maxLength: MAX_HOLES_RANGE }, body: notEmpty, legal: noResync }],
  [
    PeerMsg.VERIFY_HOLES,
    { name: 'VERIFY_HOLES', minBody: HOLES_FIXED_SIZE, maxBody: HOLES_FIXED_SIZE + HOLE_RUN_SIZE * MAX_HOLE_RUNS, scope: 'volume', range: { kind: 'range', maxLength: MAX_HOLES_RANGE }, body: holeRuns },
  ],
  [PeerMsg.DISK_FAILED, { name: 'DISK_FAILED', minBody: 4, maxBody: 4, scope: 'volume' }],
  [
    PeerMsg.RESYNC_NOW,
    { name: 'RESYNC_NOW', minBody: 4, maxBody: 4, scope: 'volume', body: (b) => (b.readUInt32BE(0) <= 1 ? undefined : `role ${b.readUInt32BE(0)}`), legal: noResync },
  ],
]);

/** A frame type's name for logs. */
export function frameName(type: number): string {
  return FRAME_RULES.get(type)?.name ?? `type ${type}`;
}

/**
 * What a frame from the peer costs while its volume works on it (the link's receive budget,
 * link-limits.ts): the bytes it holds — its body, plus, for a request whose answer reads the
 * range it names, that range's length (capped at the type's limit: the range itself is checked
 * later, by checkVolumeFrame). Undefined for the link's own frames, which are no volume's work.
 * The header was checked (checkFrameHeader): a body with a range is long enough to hold it.
 */
export function workCost(h: FrameHeader, body: Buffer): number | undefined {
  const rule = FRAME_RULES.get(h.type);
  if (rule?.scope !== 'volume') return undefined;
  if (!rule.range?.answerReads) return body.length;
  return body.length + Math.min(body.readUInt32BE(12), rule.range.maxLength);
}

/**
 * Checks a frame header as it arrives, before its body is buffered: a known type, a body size
 * within its limits, legal in this phase of the link (only HELLO or ERROR before HELLO).
 */
export function checkFrameHeader(h: FrameHeader, phase: LinkPhase): void {
  const rule = FRAME_RULES.get(h.type);
  if (!rule) throw new ProtocolViolation(`unknown peer frame type ${h.type}`);
  if (h.length < rule.minBody || h.length > rule.maxBody) throw new ProtocolViolation(`${rule.name} body of ${h.length} bytes (allowed ${rule.minBody}..${rule.maxBody})`);
  if (phase === 'handshake' && rule.scope !== 'handshake' && rule.scope !== 'any') throw new ProtocolViolation(`${rule.name} before HELLO`);
  if (phase === 'connected' && rule.scope === 'handshake') throw new ProtocolViolation(`${rule.name} on a link already set up`);
}

/**
 * Checks a volume's frame before the volume acts on it: the volume the body names is the one
 * the id routed it to, its range lies inside the volume and within the type's limit, the rest
 * of the body has the right shape, and the volume is in a state that expects the frame.
 */
export function checkVolumeFrame(h: FrameHeader, body: Buffer, v: VolumeFacts): void {
  const rule = FRAME_RULES.get(h.type);
  if (!rule || rule.scope !== 'volume') throw new ProtocolViolation(`${frameName(h.type)} is not a volume frame`);
  const bad = (why: string): never => {
    throw new ProtocolViolation(`${rule.name} for volume ${v.index}: ${why}`);
  };
  const named = rule.range || h.type === PeerMsg.BITMAP_RUNS ? body.readUInt32BE(0) : v.index;
  if (named !== v.index) bad(`the body names volume ${named}`);
  let range: Range = { offset: 0, length: 0 };
  if (rule.range) {
    const at = rule.range.kind === 'write' ? 8 : 4;
    const offset = body.readBigUInt64BE(at);
    const length = rule.range.kind === 'write' ? body.length - WRITE_HEADER_SIZE : body.readUInt32BE(12);
    // Compared as BigInt first: an offset near 2^64 does not survive the trip to a Number.
    if (offset > BigInt(v.size) || Number(offset) + length > v.size) bad(`range ${offset}+${length} outside the volume (${v.size} bytes)`);
    if (length > rule.range.maxLength) bad(`length ${length} exceeds ${rule.range.maxLength}`);
    if (rule.range.blocks && (length === 0 || length % v.blockSize !== 0 || Number(offset) % v.blockSize !== 0)) bad(`range ${offset}+${length} is not whole blocks of ${v.blockSize}`);
    range = { offset: Number(offset), length };
  }
  const shape = rule.body?.(body, range, v);
  if (shape) bad(shape);
  const illegal = rule.legal?.(v.phase, h.flags);
  if (illegal) bad(`not expected now (${illegal})`);
}

function notEmpty(_b: Buffer, r: Range): string | undefined {
  return r.length > 0 ? undefined : 'an empty range';
}

/** RS_HOLES, VERIFY_HOLES: a range answered, then its hole runs, each inside it, in order, apart. */
function holeRuns(body: Buffer, r: Range): string | undefined {
  if (r.length === 0) return 'an empty range';
  try {
    decodeHoles(body);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** BITMAP_RUNS: volume u32, then (start, length) f64 pairs in grains, each inside the bitmap. */
function bitmapRuns(body: Buffer, _r: Range, v: VolumeFacts): string | undefined {
  if ((body.length - 4) % 16 !== 0) return `${body.length - 4} bytes of runs`;
  const bits = Math.ceil(v.size / v.blockSize);
  for (let at = 4; at < body.length; at += 16) {
    const start = body.readDoubleBE(at);
    const length = body.readDoubleBE(at + 8);
    if (!Number.isInteger(start) || !Number.isInteger(length) || start < 0 || length < 0 || start + length > bits) return `run ${start}+${length} outside the ${bits} grains`;
  }
  return undefined;
}
