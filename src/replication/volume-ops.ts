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
// A change the link cuts short (the peer applied it, its answer never came): the asking node
// records the change as `unfinished` in its volumes file before it sends it, and clears it in the
// write that records it applied (or when the peer refuses it). A late answer on the same link
// applies it then. Otherwise the next link settles it (unfinished-change.ts): the peer's HELLO
// lists the volumes with the change applied → this node finishes it itself and the link comes up
// on the next attempt; the HELLO matches ours → the peer never applied it, it is dropped. A
// restart in between reads it from the file and settles it the same way.
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
import type { Hello, HelloFields } from './hello.js';
import { PeerMsg } from './peer-protocol.js';
import { helloVerdict } from './unfinished-change.js';

const hex64 = z.string().regex(/^[0-9a-f]{16}$/, 'a 64-bit generation id as 16 hex digits');

/** Why a size cannot be a volume's, or undefined. */
export function sizeRefusal(size: number): string | undefined {
  if (!Number.isSafeInteger(size) || size <= 0) return `size ${size} is not a positive whole number of bytes`;
  if (size % VOLUME_ALIGN !== 0) return `size ${size} is not a multiple of ${VOLUME_ALIGN} bytes`;
  if (size > MAX_VOLUME_SIZE) return `size ${size} is over the largest volume (${MAX_VOLUME_SIZE} bytes, 16T)`;
  return undefined;
}

/** A volume change: VOLUME_OP's body, and an unfinished change in volumes.json and a HELLO. */
export const volumeOpSchema = z
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

export type VolumeOp = z.output<typeof volumeOpSchema>;

/** The fields of a change, checked; a VolumeOpError (for the operator) when they are wrong. */
export function parseVolumeOp(fields: unknown): VolumeOp {
  const r = volumeOpSchema.safeParse(fields);
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
  /** Why this node cannot finish `op`, which the peer applied, while unlinked (room), or undefined. */
  finishRefusal(op: VolumeOp): string | undefined;
  /** Applies `op` on this node: data, metadata, exports, the volumes file (where it clears the unfinished change). Rejects if it could not. */
  apply(op: VolumeOp): Promise<void>;
  /** The change this node asked for and has not settled yet (volumes.json), if any. */
  readonly unfinished: VolumeOp | undefined;
  /** Records (or, with undefined, clears) the unfinished change durably; throws if it could not. */
  recordUnfinished(op: VolumeOp | undefined): void;
  readonly log: Logger;
  /** How long to wait for the peer's answer. */
  readonly timeoutMs: number;
}

interface Pending {
  readonly id: bigint;
  readonly answered: (refusal: string | undefined) => void;
  readonly failed: (err: Error) => void;
}

/** What the link does with a peer HELLO while a volume change is to be settled (peer-link.ts `settle`). */
export interface Settling {
  /** Why this connection is refused (the peer is told). */
  readonly refuse: string;
  /** Show the peer our HELLO before the refusal: it finishes a change of its own from it. */
  readonly answer: boolean;
  /** The refusal lasts until an operator repairs it (logged like a mismatch), rather than until the change is settled. */
  readonly manual?: boolean;
}

export class VolumeOps {
  /** The change this node is busy with (asked here, the peer's, or one it finishes), if any. */
  private busy: string | undefined;
  private pending: Pending | undefined;
  private nextId = 1n;
  /** The id the unfinished change was sent with on the live link: its answer may still come (late). */
  private unfinishedId: bigint | undefined;
  /** Why finishing the unfinished change failed here (tried once per start: see OPERATIONS.md). */
  private unfinishable: string | undefined;

  constructor(private readonly port: VolumeOpsPort) {}

  /** The change this node is applying or waiting on, if any: its HELLO could list it either way (peer-link.ts holdDial). */
  get inProgress(): string | undefined {
    return this.busy;
  }

  /**
   * An operator's change: checked here, recorded as unfinished, applied on the peer, then here.
   * Resolves with what was done; rejects with a VolumeOpError saying why nothing was (or that
   * the peer's answer did not come: then the change is settled when the link is back).
   */
  async request(op: VolumeOp): Promise<string> {
    const { port } = this;
    const what = describe(op);
    if (!port.connected) throw new VolumeOpError(`cannot ${what}: the link to ${port.peerName} is down; volumes are created, resized and deleted only while both nodes are connected`);
    if (this.busy) throw new VolumeOpError(`cannot ${what}: another volume change is in progress (${this.busy}); try again when it is done`);
    if (port.unfinished) throw new VolumeOpError(`cannot ${what}: the earlier change (${describe(port.unfinished)}) is not settled yet: ${port.peerName} has not answered it; it is finished or dropped by itself when ${port.peerName} answers or the link comes up again`);
    const refusal = port.refusal(op);
    if (refusal) throw new VolumeOpError(`cannot ${what}: ${refusal}`);
    this.busy = what;
    try {
      try {
        port.recordUnfinished(op);
      } catch (err) {
        throw new VolumeOpError(`cannot ${what}: it could not be recorded in volumes.json (${(err as Error).message}); nothing changed`);
      }
      const id = this.nextId++;
      this.unfinishedId = id;
      // Applied here from the frame handler itself, not a later turn: from the answer on, the
      // peer may send frames for the change (a client writing to the new volume there), and they
      // must find the volume here.
      const done = new Promise<void>((resolve, reject) => {
        const unsettled = `the change may have been applied there and not here; ${port.node} finishes it (or drops it, if ${port.peerName} never applied it) by itself when the answer comes or the link is back`;
        const timer = setTimeout(() => this.pending?.failed(new VolumeOpError(`${port.peerName} did not answer within ${port.timeoutMs} ms: ${unsettled}`)), port.timeoutMs);
        const settle = (): void => {
          clearTimeout(timer);
          this.pending = undefined;
        };
        this.pending = {
          id,
          answered: (peerRefusal) => {
            settle();
            if (peerRefusal !== undefined) {
              this.forgetUnfinished();
              return reject(new VolumeOpError(`cannot ${what}: ${port.peerName} refused: ${peerRefusal}`));
            }
            this.applyAnswered(op).then(resolve, (err: Error) => reject(new VolumeOpError(`${what}: applied on ${port.peerName} but failed on ${port.node}: ${err.message}`)));
          },
          failed: (err) => {
            settle();
            reject(err);
          },
        };
      });
      if (!port.send(PeerMsg.VOLUME_OP, id, encodeVolumeOp(op))) {
        this.forgetUnfinished();
        this.pending?.failed(new VolumeOpError(`cannot ${what}: the link to ${port.peerName} went down before the change was sent; nothing changed`));
      }
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
      if (this.pending?.id === id) return this.pending.answered(refusal);
      if (id === this.unfinishedId && this.port.unfinished && !this.busy) return this.lateAnswer(this.port.unfinished, refusal);
      this.port.log.warn({ id: String(id), refusal }, 'VOLUME_OP_ACK for no change in progress: ignored');
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
    if (this.port.unfinished) return refuse(`${this.port.node} has not settled its own change yet (${describe(this.port.unfinished)}): try again when it is`);
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

  /** The link is gone: a change waiting for the peer's answer fails (its outcome there is unknown until the next link). */
  linkLost(): void {
    this.unfinishedId = undefined;
    this.pending?.failed(new VolumeOpError(`the link to ${this.port.peerName} was lost before it answered: the change may have been applied there and not here; ${this.port.node} finishes it (or drops it, if ${this.port.peerName} never applied it) by itself when the link is back`));
  }

  /**
   * A peer HELLO of the right cluster and node, before the link accepts it: does a volume change
   * stand in the way? Undefined when not (the link goes on with its own check); otherwise the
   * connection is refused, and this node may start finishing its unfinished change.
   */
  settle(ours: HelloFields, theirs: Hello, mismatch: string | undefined): Settling | undefined {
    const { port } = this;
    const v = helloVerdict({ mismatch, ours: ours.volumes, theirs: theirs.volumes, ourUnfinished: port.unfinished, theirUnfinished: theirs.unfinished, busy: this.busy, failed: this.unfinishable });
    switch (v.kind) {
      case 'link':
      case 'mismatch':
        return undefined;
      case 'wait':
        return { refuse: `${port.node} is applying a volume change (${v.busy}); the link comes up once it is done`, answer: false };
      case 'peer-finishes':
        return { refuse: `${port.node} applied the change ${describe(v.op)}, which a link loss cut short on ${port.peerName}: waiting for ${port.peerName} to finish it`, answer: true };
      case 'unfinishable':
        return this.unfinishableRefusal(v.op, v.why, mismatch);
      case 'finish': {
        const why = port.finishRefusal(v.op);
        if (why !== undefined) {
          this.cannotFinish(v.op, why, mismatch);
          return this.unfinishableRefusal(v.op, why, mismatch);
        }
        this.finish(v.op, mismatch);
        return { refuse: `finishing the volume change ${describe(v.op)} that a link loss cut short (${port.peerName} applied it)`, answer: false };
      }
    }
  }

  private unfinishableRefusal(op: VolumeOp, why: string, mismatch: string | undefined): Settling {
    return { refuse: `${mismatch}: ${this.port.node} could not finish the change ${describe(op)} that ${this.port.peerName} applied (${why}); docs/OPERATIONS.md says how to repair it`, answer: false, manual: true };
  }

  /** Finishing `op` here failed, or cannot start: not tried again until a restart; the link stays refused, saying why. */
  private cannotFinish(op: VolumeOp, why: string, mismatch: string | undefined): void {
    this.unfinishable = why;
    this.port.log.error({ op: op.op, volume: op.name, size: op.size, reason: why, mismatch }, 'a volume change the peer applied cannot be finished here: the link stays down until it is repaired (docs/OPERATIONS.md)');
  }

  /** A link is up with matching HELLOs: an unfinished change still recorded was never applied on the peer. */
  linkUp(): void {
    const u = this.port.unfinished;
    if (!u || this.busy) return;
    this.port.log.warn({ op: u.op, volume: u.name, size: u.size }, `the volume change (${describe(u)}) was not applied on ${this.port.peerName}: given up; nothing changed`);
    this.forgetUnfinished();
  }

  /** The peer's answer came after the request gave up on it, on the same link. */
  private lateAnswer(op: VolumeOp, refusal: string | undefined): void {
    this.unfinishedId = undefined;
    if (refusal !== undefined) {
      this.port.log.warn({ op: op.op, volume: op.name, refusal }, `${this.port.peerName} refused the volume change (${describe(op)}) after its request gave up waiting: nothing changed`);
      return this.forgetUnfinished();
    }
    this.busy = describe(op);
    void this.applyAnswered(op).then(
      () => this.port.log.warn({ op: op.op, volume: op.name, size: op.size }, `${this.port.peerName} answered the volume change (${describe(op)}) after its request gave up waiting: applied here now`),
      () => undefined, // logged by applyAnswered; the change stays unfinished, settled at the next link
    ).finally(() => (this.busy = undefined));
  }

  /** The peer applied `op`: applied here (the volumes file records it and clears it as unfinished). */
  private applyAnswered(op: VolumeOp): Promise<void> {
    this.unfinishedId = undefined;
    return this.port.apply(op).catch((err: unknown) => {
      this.port.log.error({ err, op }, 'volume change applied on the peer but failed here');
      throw err;
    });
  }

  /** Applies here, while unlinked, the recorded change the peer's HELLO shows it applied. */
  private finish(op: VolumeOp, mismatch: string | undefined): void {
    const what = describe(op);
    this.busy = `finishing ${what}`;
    // The peer deleted it already: this node's clients of the volume go too.
    const applied = op.op === 'delete' ? { ...op, force: true } : op;
    // A later turn: the link is in the middle of refusing this HELLO.
    setImmediate(() => {
      void this.port.apply(applied).then(
        () => this.port.log.warn({ op: op.op, volume: op.name, size: op.size, mismatch }, `finished the volume change (${what}) that a link loss cut short: ${this.port.peerName} had applied it${op.op === 'delete' ? '; NBD clients of the volume here were dropped' : ''}; the link comes up at the next attempt`),
        (err: unknown) => this.cannotFinish(op, (err as Error).message, mismatch),
      ).finally(() => (this.busy = undefined));
    });
  }

  /** Clears the unfinished change (nothing of it applied on either node); a failed write leaves it for the next link-up. */
  private forgetUnfinished(): void {
    this.unfinishedId = undefined;
    try {
      this.port.recordUnfinished(undefined);
    } catch (err) {
      this.port.log.error({ err }, 'could not clear the unfinished volume change in volumes.json: it is dropped at the next link-up');
    }
  }
}

function describe(op: VolumeOp): string {
  if (op.op === 'delete') return `delete volume ${op.name}${op.force ? ' (--force)' : ''}`;
  return `${op.op === 'create' ? 'create' : 'grow'} volume ${op.name} to ${formatSize(op.size!)} (${op.size} bytes)`;
}
