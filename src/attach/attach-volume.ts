// A volume as the attach endpoint serves it: a `Volume` (so the server's Connection serves it
// like any local one) whose requests go to one of two nodes — the active path — and move to the
// other when that one fails, or back when the preferred node is in sync again.
//
// Modes (every change through `setMode`, checked against the table, logged once with its reason):
//
//   waiting       no path can carry I/O yet: requests are held
//   active        requests go to the active path
//   failing-over  the active path failed (connection lost, I/O timeout, the node shutting down,
//                 or the other node took the volume over): new requests are held, and so are
//                 those the failed path had in flight once its connection is gone
//   draining      fail-back or balance: new requests are held until the old path has answered
//                 everything it has, then they go to the new one (no request is ever sent again)
//
// THE RE-SEND RULE (docs/ARCHITECTURE.md): a request that changes data (WRITE, TRIM,
// WRITE_ZEROES) and was sent to node P without an answer is sent again to the other node Q only
// when Q reports (admin status) that it writes the volume alone: its peer link is down and its
// quorum gate says `alone` (the witness granted it, or P left gracefully). From then on nothing
// P still holds can reach Q's copy (the link is down; the link's return resyncs from Q, the grant
// holder, over whatever P applied late), so the copy sent to Q is the last one Q applies. Until
// then the held requests wait (the client sees a pause, never an error): P may be alive and slow,
// and its replies end the pause on the same connection; or P's connection was closed by P (kill,
// restart, stop) and a new connection to P — the old one's unread requests died with it — takes
// them again. Reads, FLUSH, CACHE and BLOCK_STATUS change nothing: with no data-changing request
// of P outstanding, everything moves to any node that serves the volume UpToDate at once.
//
// A VOLUME GROWN ONLINE (`followGrowth`): a node whose status gives the volume a larger size than
// a path's connection negotiated gets that path renewed (path.ts: a second connection, then the
// old one drains — no mode change, no request held); once both paths have the new size it is
// offered to new local clients (THE SIZE RULE, offered-size.ts). Connections already open keep
// the size they negotiated, as NBD clients do.
import { Cmd, CmdFlag, NbdErr, TransmissionFlag } from '../protocol/constants.js';
import { NbdError, nbdErrName } from '../protocol/errors.js';
import type { Logger } from '../log.js';
import type { VolumeStatus } from '../replication/cluster-node.js';
import type { Done, Extent, Volume, VolumeCapabilities, ZeroOptions } from '../volume/volume.js';
import { changesData, type Forwarded } from './node-connection.js';
import { sizeToOffer } from './offered-size.js';
import type { NodePath, PathEvents, PathState } from './path.js';

export type AttachMode = 'waiting' | 'active' | 'failing-over' | 'draining';

export const MODE_TRANSITIONS: Readonly<Record<AttachMode, readonly AttachMode[]>> = {
  waiting: ['active'],
  active: ['failing-over', 'draining'],
  'failing-over': ['active'],
  draining: ['active', 'failing-over'],
};

/** Why the active path was left. */
type FailKind = 'closed' | 'stall' | 'shutdown' | 'takeover' | 'error';

/** A request a node failed with EIO is tried again (by the re-send rule) at most this often; then the client gets the EIO. */
export const MAX_EIO_RETRIES = 3;

interface AttachOp extends Forwarded {
  /** The node it was last sent to; undefined when no node has it (never sent, or refused unstarted). */
  sentTo: string | undefined;
  readonly done: (err: Error | null, extents?: Extent[]) => void;
}

/** A node's word on the volume, from its admin status (node-watch.ts). */
export type StatusOf = (node: string) => VolumeStatus | undefined;

export interface PauseRecord {
  from: string | null;
  to: string;
  kind: 'fail-over' | 'fail-back' | 'start';
  reason: string;
  /** From the oldest held request's send (or the switch's start) to the switch. */
  pauseMs: number;
  resent: number;
  at: string;
}

export interface AttachVolumeStatus {
  /** Bytes offered to new local clients. */
  size: number;
  mode: AttachMode;
  active: string | null;
  preferred: string;
  reason: string;
  /** `size`: what the path's connection negotiated with its node. */
  paths: Record<string, { state: PathState; reason: string; inFlight: number; size: number | null }>;
  held: number;
  resentTotal: number;
  failovers: number;
  failbacks: number;
  lastStall: PauseRecord | null;
}

export function capabilitiesFrom(flags: number): VolumeCapabilities {
  const has = (f: TransmissionFlag) => (flags & f) !== 0;
  return {
    readOnly: has(TransmissionFlag.READ_ONLY),
    flush: has(TransmissionFlag.SEND_FLUSH),
    fua: has(TransmissionFlag.SEND_FUA),
    trim: has(TransmissionFlag.SEND_TRIM),
    zero: has(TransmissionFlag.SEND_WRITE_ZEROES),
    fastZero: has(TransmissionFlag.SEND_FAST_ZERO),
    cache: has(TransmissionFlag.SEND_CACHE),
    multiConn: has(TransmissionFlag.CAN_MULTI_CONN),
  };
}

export class AttachVolume implements Volume, PathEvents {
  private mode: AttachMode = 'waiting';
  private reason = 'starting: no path ready yet';
  /** active: the path in use; failing-over: the failed one; draining: the one being left. */
  private active: NodePath | undefined;
  private drainTo: NodePath | undefined;
  private failKind: FailKind = 'closed';
  /** The failed path's connection count when it failed: a higher one is a new connection. */
  private failGeneration = 0;
  private pausedSince: number | undefined;
  private held: AttachOp[] = [];
  private seq = 0;
  private resentTotal = 0;
  private failovers = 0;
  private failbacks = 0;
  private lastStall: PauseRecord | null = null;
  private stopping = false;
  /** The failed path's connection is being closed here: its `lost` must not decide anything. */
  private dropping = false;
  paths: NodePath[] = [];
  capabilities!: VolumeCapabilities;
  /**
   * What new local clients are offered: the size and flags a node announced when the volume was
   * first served here; the size grows with the volume by the size rule (offered-size.ts).
   */
  size = 0;

  constructor(
    readonly name: string,
    readonly preferred: string,
    private readonly statusOf: StatusOf,
    private readonly log: Logger,
    /** After a node failed a request with EIO, its status is trusted again only this much later (a fresh poll). */
    private readonly retryAfterMs = 0,
    /** The offered size grew: new local clients are to be offered `size` from now on. */
    private readonly grown: (v: AttachVolume) => void = () => {},
  ) {}

  /** The two paths (made with this volume as their events); the export's flags come from the first ready one. */
  attachPaths(paths: NodePath[]): void {
    this.paths = paths;
  }

  /** Size and flags, from the first node that served the volume (before it is offered). */
  describe(size: number, capabilities: VolumeCapabilities): void {
    this.size = size;
    this.capabilities = capabilities;
    this.evaluate();
  }

  // ---- Volume: every request becomes one forwarded op ----

  read(buf: Buffer, offset: number, done: Done): void {
    this.submit(Cmd.READ, 0, offset, buf.length, buf, done);
  }
  write(buf: Buffer, offset: number, fua: boolean, done: Done): void {
    this.submit(Cmd.WRITE, fua ? CmdFlag.FUA : 0, offset, buf.length, buf, done);
  }
  flush(done: Done): void {
    this.submit(Cmd.FLUSH, 0, 0, 0, undefined, done);
  }
  trim(offset: number, length: number, fua: boolean, done: Done): void {
    this.submit(Cmd.TRIM, fua ? CmdFlag.FUA : 0, offset, length, undefined, done);
  }
  zero(offset: number, length: number, opts: ZeroOptions, done: Done): void {
    const flags = (opts.fua ? CmdFlag.FUA : 0) | (opts.noHole ? CmdFlag.NO_HOLE : 0) | (opts.fastZero ? CmdFlag.FAST_ZERO : 0);
    this.submit(Cmd.WRITE_ZEROES, flags, offset, length, undefined, done);
  }
  cache(offset: number, length: number, done: Done): void {
    this.submit(Cmd.CACHE, 0, offset, length, undefined, done);
  }
  extents(offset: number, length: number, max: number, done: (err: Error | null, extents: Extent[]) => void): void {
    this.submit(Cmd.BLOCK_STATUS, max === 1 ? CmdFlag.REQ_ONE : 0, offset, length, undefined, (err, x) => done(err, x ?? []));
  }
  async close(): Promise<void> {
    this.stopping = true;
    for (const p of this.paths) p.stop();
    this.failHeld('attach is stopping');
  }

  private submit(type: Cmd, flags: number, offset: number, length: number, data: Buffer | undefined, done: (err: Error | null, extents?: Extent[]) => void): void {
    const op: AttachOp = { seq: this.seq++, type, flags, offset, length, data, sentAt: 0, resent: 0, errno: 0, message: '', extents: undefined, sentTo: undefined, done };
    if (this.mode === 'active') this.send(this.active!, op);
    else this.held.push(op);
  }

  private send(path: NodePath, op: AttachOp): void {
    if (path.state !== 'ready' && path.state !== 'stalled') {
      // Not meant to happen (a path is only active while connected); if it does, the request
      // waits for the next decision instead of failing the client's connection.
      this.log.error({ volume: this.name, node: path.node, state: path.state }, 'request for a path without a connection: held');
      this.held.push(op);
      return;
    }
    op.sentTo = path.node;
    op.errno = 0;
    op.extents = undefined;
    path.send(op);
  }

  // ---- path events ----

  changed(path: NodePath): void {
    if (path.info && this.size > 0 && path.info.size < this.size) {
      this.log.error({ volume: this.name, node: path.node, nodeSize: path.info.size, size: this.size }, 'the node serves the volume smaller than attach offers it: path not used');
    }
    this.evaluate();
  }

  replied(path: NodePath, forwarded: Forwarded): void {
    const op = forwarded as AttachOp;
    if (op.errno === NbdErr.ESHUTDOWN && !this.stopping) {
      // Refused before it started: no node has it. The path is leaving: fail over.
      op.sentTo = undefined;
      this.held.push(op);
      if (this.active === path && (this.mode === 'active' || this.mode === 'draining')) this.failOver('shutdown', `node ${path.node} is shutting down (ESHUTDOWN)`);
      return this.evaluate();
    }
    if (op.errno === NbdErr.EIO && op.resent < MAX_EIO_RETRIES && !this.stopping) {
      // The node could not carry it out now: it lost quorum while holding it (`quorum.onNoQuorum`
      // io-error, or suspend timed out), or its peer came back before quorum was decided. It may
      // have applied it to its own copy (its bits name it; the resync settles that), so it is
      // held as if still in flight there: sent again by the re-send rule, to the other node once
      // that one writes alone, or to this one once its status says it may write again.
      this.held.push(op);
      this.log.info({ volume: this.name, node: path.node, type: op.type, offset: op.offset, length: op.length, message: op.message, tries: op.resent + 1 }, 'the node failed a request with EIO: held, to be sent again');
      if (this.active === path && (this.mode === 'active' || this.mode === 'draining')) this.failOver('error', `node ${path.node} failed a request (EIO${op.message ? `: ${op.message}` : ''})`);
      return this.evaluate();
    }
    if (op.errno !== 0) {
      this.log.debug({ volume: this.name, node: path.node, type: op.type, offset: op.offset, length: op.length, error: nbdErrName(op.errno), message: op.message }, 'the node failed a request');
      op.done(new NbdError(op.errno, op.message || `node ${path.node} answered ${nbdErrName(op.errno)}`));
    } else op.done(null, op.extents);
    if (this.mode === 'draining' && path === this.active && path.inFlight === 0) this.evaluate();
  }

  lost(path: NodePath, reason: string, _byNode: boolean, inFlight: Forwarded[]): void {
    for (const op of inFlight) this.held.push(op as AttachOp);
    if (this.stopping) return this.failHeld('attach is stopping');
    if (path === this.active && (this.mode === 'active' || this.mode === 'draining')) this.failOver('closed', `connection to node ${path.node} lost: ${reason}`);
    else if (path === this.drainTo && this.mode === 'draining') {
      // The node we were moving to is gone; stay where we are.
      this.drainTo = undefined;
      this.resume(this.active!, 'fail-back', `fail-back to node ${path.node} abandoned: ${reason}`);
    }
    if (!this.dropping) this.evaluate();
  }

  // ---- decisions ----

  /** Called on every path event, status poll and tick: moves the volume on if it can. */
  evaluate(): void {
    if (this.stopping || this.dropping) return;
    this.followGrowth();
    switch (this.mode) {
      case 'waiting': {
        // The other node only once the preferred one has had its first try (both are dialed at start).
        const pref = this.preferredPath();
        const other = this.otherPath(pref);
        const target = this.usable(pref) ? pref : pref.state !== 'connecting' && this.usable(other) ? other : undefined;
        if (target) this.resume(target, 'start', `node ${target.node} serves the volume UpToDate`);
        return;
      }
      case 'active': {
        const p = this.active!;
        const q = this.otherPath(p);
        if (p.state !== 'ready') return this.failOver(p.state === 'stalled' ? 'stall' : 'closed', `path to node ${p.node} is ${p.state}: ${p.reason}`);
        if (this.takenOver(q) && !this.takenOver(p)) return this.failOver('takeover', `node ${q.node} took the volume over (peer link down, writing alone)`);
        if (p.node !== this.preferred && this.inSync(this.preferredPath()) && this.inSync(p)) {
          this.drainTo = this.preferredPath();
          this.setMode('draining', `node ${this.preferred} (preferred) is UpToDate and connected again: draining node ${p.node}`);
          return this.evaluate();
        }
        return;
      }
      case 'draining': {
        const from = this.active!;
        if (from.inFlight === 0) {
          const to = this.drainTo!;
          this.drainTo = undefined;
          this.failbacks++;
          this.resume(to, 'fail-back', `back to node ${to.node} (preferred), node ${from.node} drained`);
        }
        return;
      }
      case 'failing-over': {
        const p = this.active!;
        const q = this.otherPath(p);
        // The failed path healthy again comes first: no switch at all.
        const stallOver = this.failKind === 'stall' && p.state === 'ready';
        const reconnected = (this.failKind === 'closed' || this.failKind === 'shutdown') && p.state === 'ready' && p.generation > this.failGeneration;
        // After an EIO, the node's word that it may write again must be news: a status read since.
        const errorOver = this.failKind === 'error' && p.state === 'ready' && Date.now() - this.pausedSince! >= this.retryAfterMs;
        if ((stallOver || reconnected || errorOver) && this.usable(p) && !this.takenOver(q)) {
          const why = stallOver ? `node ${p.node} answers again` : reconnected ? `reconnected to node ${p.node}` : `node ${p.node} may write again`;
          return this.resume(p, 'fail-over', why);
        }
        if (this.usable(q) && (this.takenOver(q) || !this.writesOutstanding(p))) {
          const why = this.takenOver(q) ? `node ${q.node} writes the volume alone` : `no write of node ${p.node} is outstanding`;
          this.dropping = true;
          p.drop(`moving the volume to node ${q.node}`); // its requests in flight come back into `held`
          this.dropping = false;
          this.failovers++;
          return this.resume(q, 'fail-over', `fail-over from node ${p.node}: ${why}`);
        }
        return;
      }
    }
  }

  /** Renews paths that negotiated less than their node serves; offers a size both paths have. */
  private followGrowth(): void {
    if (this.size === 0) return; // not offered yet: `describe` sets the first size
    for (const p of this.paths) {
      const served = this.statusOf(p.node)?.size;
      if (p.info && served !== undefined && served > p.info.size) p.renew(`node ${p.node} serves the volume at ${served} bytes, the path's connection negotiated ${p.info.size}`);
    }
    const next = sizeToOffer(this.size, this.paths.map((p) => p.info?.size));
    if (next === this.size) return;
    const from = this.size;
    this.size = next;
    const reason = `grown online: the paths to ${this.paths.map((p) => `${p.node} (${p.info!.size})`).join(' and ')} negotiated at least ${next} bytes`;
    this.log.info({ volume: this.name, from, to: next, reason }, 'volume size offered');
    this.grown(this);
  }

  /** Ready for I/O: connected, and the node says its copy is UpToDate and it may write. */
  private usable(p: NodePath): boolean {
    if (p.state !== 'ready' || this.size === 0 || p.info === undefined || p.info.size < this.size) return false;
    const s = this.statusOf(p.node);
    return s !== undefined && s.disk === 'UpToDate' && (s.quorum === 'connected' || s.quorum === 'alone');
  }

  /** The node writes the volume alone: nothing its peer still holds can reach its copy. */
  private takenOver(p: NodePath): boolean {
    const s = this.statusOf(p.node);
    return this.usable(p) && s!.connection !== 'Connected' && s!.quorum === 'alone';
  }

  /** UpToDate, mirrored and caught up: I/O may move there without a pause. */
  private inSync(p: NodePath): boolean {
    const s = this.statusOf(p.node);
    return this.usable(p) && s!.connection === 'Connected' && s!.replication === 'Connected' && s!.resync === null && s!.outOfSyncBytes === 0;
  }

  /** A data-changing request sent to `p` may still be applied there. */
  private writesOutstanding(p: NodePath): boolean {
    return p.writesInFlight() || this.held.some((op) => op.sentTo === p.node && changesData(op.type));
  }

  private failOver(kind: FailKind, reason: string): void {
    const p = this.active!;
    this.failKind = kind;
    this.failGeneration = p.generation;
    this.pausedSince = Date.now();
    this.drainTo = undefined;
    this.setMode('failing-over', reason);
    this.evaluate();
  }

  /** Makes `to` the active path and sends it everything held, in arrival order. */
  private resume(to: NodePath, kind: PauseRecord['kind'], reason: string): void {
    const from = this.active;
    const ops = this.held.sort((x, y) => x.seq - y.seq);
    this.held = [];
    let resent = 0;
    let oldest = this.pausedSince ?? Date.now();
    for (const op of ops) {
      if (op.sentTo !== undefined) {
        op.resent++;
        resent++;
        oldest = Math.min(oldest, op.sentAt);
      }
    }
    this.resentTotal += resent;
    this.active = to;
    if (this.mode !== 'active') this.setMode('active', reason, { resent });
    for (const op of ops) this.send(to, op);
    if (kind !== 'start' || this.pausedSince !== undefined) {
      this.lastStall = { from: from?.node ?? null, to: to.node, kind, reason, pauseMs: Date.now() - oldest, resent, at: new Date().toISOString() };
    }
    this.pausedSince = undefined;
  }

  /** On stop only: requests nobody will answer get ESHUTDOWN. */
  private failHeld(reason: string): void {
    const ops = this.held;
    this.held = [];
    for (const op of ops) op.done(new NbdError(NbdErr.ESHUTDOWN, reason));
  }

  private setMode(next: AttachMode, reason: string, extra: Record<string, unknown> = {}): void {
    if (!MODE_TRANSITIONS[this.mode].includes(next)) throw new Error(`volume ${this.name}: ${this.mode} -> ${next} is not a transition`);
    const from = this.mode;
    this.mode = next;
    this.reason = reason;
    const fields = { volume: this.name, from, to: next, active: this.active?.node, held: this.held.length, reason, ...extra };
    if (next === 'failing-over') this.log.warn(fields, 'volume path change');
    else this.log.info(fields, 'volume path change');
  }

  private preferredPath(): NodePath {
    return this.paths.find((p) => p.node === this.preferred)!;
  }

  private otherPath(p: NodePath): NodePath {
    return this.paths.find((x) => x !== p)!;
  }

  /** Ready ⇄ stalled for both paths (a tick of the I/O timeout check). */
  tick(now: number): void {
    for (const p of this.paths) p.checkStall(now);
    this.evaluate();
  }

  status(): AttachVolumeStatus {
    return {
      size: this.size,
      mode: this.mode,
      active: this.mode === 'waiting' ? null : this.active!.node,
      preferred: this.preferred,
      reason: this.reason,
      paths: Object.fromEntries(this.paths.map((p) => [p.node, { state: p.state, reason: p.reason, inFlight: p.inFlight, size: p.info?.size ?? null }])),
      held: this.held.length,
      resentTotal: this.resentTotal,
      failovers: this.failovers,
      failbacks: this.failbacks,
      lastStall: this.lastStall,
    };
  }
}
