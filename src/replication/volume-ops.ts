// Volumes created, grown and deleted online, on both nodes. The node an operator asks (admin
// endpoint, `nbd-mirror volume create|resize|delete`) checks the change, sends it to its peer
// (VOLUME_OP), and applies it itself only once the peer has applied it (VOLUME_OP_ACK status 0);
// a peer that refuses leaves both nodes unchanged. The rule a storage admin can rely on: a
// volume change needs both nodes connected (otherwise they would no longer link: their HELLOs
// would list different volumes), and one change at a time in the pair — a node busy with one
// refuses another, from its operator or from its peer, so the two never apply changes in
// different orders (volumes created in one link session are numbered on the wire in the order
// they were created, which must be the same on both).
//
// What is checked where: the shape of a VOLUME_OP (name in the safe set, size, fields) as it is
// parsed — a malformed one is a protocol violation that drops the link; whether the change is
// legal now (the name exists or not, the volume's state, its clients) by the receiving node's
// `refusal`, answered with a refusal and no change.
import { z } from 'zod';
import { MAX_VOLUME_SIZE, name as safeName, VOLUME_ALIGN } from '../config/cluster.js';
import { formatSize } from '../config/units.js';
import type { Logger } from '../log.js';
import { ProtocolViolation } from '../protocol/errors.js';
import { MAX_VOLUME_OP } from './peer-frames.js';
import { PeerMsg } from './peer-protocol.js';

const hex64 = z.string().regex(/^[0-9a-f]{16}$/, 'a 64-bit generation id as 16 hex digits');

/** Why a size cannot be a volume's, or undefined. */
export function sizeRefusal(size: number): string | undefined {
  if (!Number.isSafeInteger(size) || size <= 0) return `size ${size} is not a positive whole number of bytes`;
  if (size % VOLUME_ALIGN !== 0) return `size ${size} is not a multiple of ${VOLUME_ALIGN} bytes`;
  if (size > MAX_VOLUME_SIZE) return `size ${size} is over the largest volume (${MAX_VOLUME_SIZE} bytes, 16T)`;
  return undefined;
}

const opSchema = z
  .strictObject({
    op: z.enum(['create', 'resize', 'delete']),
    name: safeName,
    /** create, resize: the size in bytes. */
    size: z.number().optional(),
    /** delete: drop the volume's NBD clients instead of refusing while it has any (a resize keeps them). */
    force: z.boolean().default(false),
    /**
     * create: the new volume's generation id, the same on both nodes — both copies start as
     * zeroes, identical by definition, so both start UpToDate with it and a later link finds
     * them in sync.
     */
    generation: hex64.optional(),
  })
  .superRefine((o, ctx) => {
    if (o.op === 'delete') {
      if (o.size !== undefined) ctx.addIssue({ code: 'custom', path: ['size'], message: 'a delete has no size' });
    } else {
      const why = o.size === undefined ? 'missing' : sizeRefusal(o.size);
      if (why) ctx.addIssue({ code: 'custom', path: ['size'], message: why });
    }
    if (o.force && o.op !== 'delete') ctx.addIssue({ code: 'custom', path: ['force'], message: 'only a delete takes force (a resize keeps its clients connected)' });
    if ((o.op === 'create') !== (o.generation !== undefined)) ctx.addIssue({ code: 'custom', path: ['generation'], message: 'a create, and only a create, carries a generation id' });
  });

export type VolumeOp = z.output<typeof opSchema>;

/** The fields of a change, checked; a VolumeOpError (for the operator) when they are wrong. */
export function parseVolumeOp(fields: unknown): VolumeOp {
  const r = opSchema.safeParse(fields);
  if (!r.success) throw new VolumeOpError(r.error.issues.map((i) => `${i.path.join('.') || 'request'}: ${i.message}`).join('; '));
  return r.data;
}

export function encodeVolumeOp(op: VolumeOp): Buffer {
  return Buffer.from(JSON.stringify(op), 'utf8');
}

/** A VOLUME_OP body from the peer; anything malformed is a protocol violation (the link drops). */
export function decodeVolumeOp(body: Buffer): VolumeOp {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    throw new ProtocolViolation('VOLUME_OP body is not JSON');
  }
  try {
    return parseVolumeOp(json);
  } catch (err) {
    throw new ProtocolViolation(`VOLUME_OP invalid: ${(err as Error).message}`);
  }
}

/** VOLUME_OP_ACK: status 0 and no reason when applied, 1 and the reason when refused. */
export function encodeOpAck(refusal: string | undefined): Buffer {
  const reason = Buffer.from(refusal ?? '', 'utf8').subarray(0, MAX_VOLUME_OP);
  const b = Buffer.alloc(4 + reason.length);
  b.writeUInt32BE(refusal === undefined ? 0 : 1, 0);
  reason.copy(b, 4);
  return b;
}

export function decodeOpAck(body: Buffer): { refusal: string | undefined } {
  const status = body.readUInt32BE(0);
  if (status > 1) throw new ProtocolViolation(`VOLUME_OP_ACK status ${status}`);
  return { refusal: status === 0 ? undefined : body.toString('utf8', 4) || 'refused' };
}

/** A change refused (by this node or its peer) or failed: the admin endpoint answers it as 409. */
export class VolumeOpError extends Error {
  readonly code = 'NBD_MIRROR_VOLUME_OP';
  constructor(message: string) {
    super(message);
    this.name = 'VolumeOpError';
  }
}

/** What the coordinator needs of the node. */
export interface VolumeOpsPort {
  readonly node: string;
  readonly peerName: string;
  /** The peer link is up (after HELLO). */
  readonly connected: boolean;
  send(type: PeerMsg, id: bigint, body: Buffer): boolean;
  /** Why this node cannot apply `op` now (name taken or missing, state, clients, room), or undefined. */
  refusal(op: VolumeOp): string | undefined;
  /** Applies `op` on this node: data, metadata, exports, the volumes file. Rejects if it could not. */
  apply(op: VolumeOp): Promise<void>;
  readonly log: Logger;
  /** How long to wait for the peer's answer. */
  readonly timeoutMs: number;
}

interface Pending {
  readonly id: bigint;
  readonly answered: (refusal: string | undefined) => void;
  readonly failed: (err: Error) => void;
}

export class VolumeOps {
  /** The change this node is busy with (asked here, or applying the peer's), if any. */
  private busy: string | undefined;
  private pending: Pending | undefined;
  private nextId = 1n;

  constructor(private readonly port: VolumeOpsPort) {}

  /**
   * An operator's change: checked here, applied on the peer, then here. Resolves with what was
   * done; rejects with a VolumeOpError saying why nothing was (or, rarely, what was half done).
   */
  async request(op: VolumeOp): Promise<string> {
    const { port } = this;
    const what = describe(op);
    if (!port.connected) throw new VolumeOpError(`cannot ${what}: the link to ${port.peerName} is down; volumes are created, resized and deleted only while both nodes are connected`);
    if (this.busy) throw new VolumeOpError(`cannot ${what}: another volume change is in progress (${this.busy}); try again when it is done`);
    const refusal = port.refusal(op);
    if (refusal) throw new VolumeOpError(`cannot ${what}: ${refusal}`);
    this.busy = what;
    try {
      const id = this.nextId++;
      // Applied here from the frame handler itself, not a later turn: from the answer on, the
      // peer may send frames for the change (a client writing to the new volume there), and they
      // must find the volume here.
      const done = new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => this.pending?.failed(new VolumeOpError(`${port.peerName} did not answer within ${port.timeoutMs} ms: the change may have been applied there and not here; check nbd-mirror status on both nodes`)), port.timeoutMs);
        const settle = (): void => {
          clearTimeout(timer);
          this.pending = undefined;
        };
        this.pending = {
          id,
          answered: (peerRefusal) => {
            settle();
            if (peerRefusal !== undefined) return reject(new VolumeOpError(`cannot ${what}: ${port.peerName} refused: ${peerRefusal}`));
            port.apply(op).then(resolve, (err: unknown) => {
              port.log.error({ err, op }, 'volume change applied on the peer but failed here');
              reject(new VolumeOpError(`${what}: applied on ${port.peerName} but failed on ${port.node}: ${(err as Error).message}`));
            });
          },
          failed: (err) => {
            settle();
            reject(err);
          },
        };
      });
      if (!port.send(PeerMsg.VOLUME_OP, id, encodeVolumeOp(op))) this.pending?.failed(new VolumeOpError(`cannot ${what}: the link to ${port.peerName} went down before the change was sent; nothing changed`));
      await done;
      port.log.info({ op: op.op, volume: op.name, size: op.size, force: op.force, peer: port.peerName }, 'volume changed online on both nodes');
      return `${what}: done on ${port.peerName} and ${port.node}`;
    } finally {
      this.busy = undefined;
    }
  }

  /** VOLUME_OP or VOLUME_OP_ACK from the peer (the link checked its size and phase). */
  onFrame(type: PeerMsg, id: bigint, body: Buffer): void {
    if (type === PeerMsg.VOLUME_OP_ACK) {
      const { refusal } = decodeOpAck(body);
      // An answer to a change given up on (timed out): nothing waits for it.
      if (this.pending?.id === id) this.pending.answered(refusal);
      else this.port.log.warn({ id: String(id), refusal }, 'VOLUME_OP_ACK for no change in progress: ignored');
      return;
    }
    const op = decodeVolumeOp(body);
    const what = describe(op);
    const refuse = (why: string): void => {
      this.port.log.warn({ op: op.op, volume: op.name, reason: why }, 'volume change from the peer refused');
      this.port.send(PeerMsg.VOLUME_OP_ACK, id, encodeOpAck(why));
    };
    // Both nodes asked at once: each refuses the other's (both operators retry; rare).
    if (this.busy) return refuse(`${this.port.node} is busy with another volume change (${this.busy})`);
    const refusal = this.port.refusal(op);
    if (refusal) return refuse(refusal);
    this.busy = what;
    this.port.apply(op).then(
      () => {
        this.busy = undefined;
        this.port.log.info({ op: op.op, volume: op.name, size: op.size, force: op.force }, 'volume change from the peer applied');
        this.port.send(PeerMsg.VOLUME_OP_ACK, id, encodeOpAck(undefined));
      },
      (err: unknown) => {
        this.busy = undefined;
        this.port.log.error({ err, op }, 'volume change from the peer failed here');
        this.port.send(PeerMsg.VOLUME_OP_ACK, id, encodeOpAck(`failed on ${this.port.node}: ${(err as Error).message}`));
      },
    );
  }

  /** The link is gone: a change waiting for the peer's answer fails (its outcome there is unknown). */
  linkLost(): void {
    this.pending?.failed(new VolumeOpError(`the link to ${this.port.peerName} was lost before it answered: the change may have been applied there and not here; check nbd-mirror status on both nodes`));
  }
}

function describe(op: VolumeOp): string {
  if (op.op === 'delete') return `delete volume ${op.name}${op.force ? ' (--force)' : ''}`;
  return `${op.op === 'create' ? 'create' : 'grow'} volume ${op.name} to ${formatSize(op.size!)} (${op.size} bytes)`;
}
