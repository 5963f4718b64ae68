// May this node write without its peer? The quorum gate answers for every write that cannot be
// mirrored, and holds or fails it when the answer is no.
//
//   connected   the peer is there: writes are mirrored, nothing to decide
//   alone       writing alone is allowed: no witness is configured (DRBD-like, split brain then
//               possible and detected), or the peer said it was leaving, or the witness granted it
//   claiming    the peer is gone and the witness is being asked
//   denied      the witness gave the grant to the peer: this copy is, or will be, outdated;
//               or this copy is brand new (a replaced, empty disk) and the witness knows the
//               cluster holds data (on the peer): it would serve nothing of it. Writes AND
//               reads wait (policy below), so no client sees old or missing data
//   no-quorum   neither peer nor witness answers: this node cannot know whether the peer writes;
//               writes wait or fail by policy, reads go on — unless this copy may be old: the
//               witness refused it earlier, or the node has just started and has seen neither
//               peer nor witness yet (the peer may have written alone while it was down); such
//               a node holds reads too until its peer connects or the witness grants it
//
// Policy `on-no-quorum` for writes that may not go on: `suspend` holds them up to `suspendMs`
// (a peer or witness coming back in time lets them through), then fails them with EIO;
// `io-error` fails them at once. Failing is safe: a write that fails may be on this disk or not,
// and the resync from the grant holder settles it.
import type { Logger } from '../log.js';
import type { WitnessClient } from '../witness/witness-client.js';

export type QuorumState = 'connected' | 'alone' | 'claiming' | 'denied' | 'no-quorum';

export interface QuorumDescription {
  state: QuorumState;
  reason: string;
  witness: boolean;
  grantHeld: boolean;
}
export type NoQuorumPolicy = 'suspend' | 'io-error';

export interface QuorumOptions {
  /** Absent: no witness, a node without its peer always writes alone. */
  readonly witness?: WitnessClient;
  readonly onNoQuorum: NoQuorumPolicy;
  /** How long `suspend` holds a request before failing it with EIO. */
  readonly suspendMs: number;
  /** How often the witness is asked again while the answer is not yes. */
  readonly retryMs: number;
  readonly log: Logger;
  /**
   * Is this node's copy brand new (every volume new, never synced nor written: a replaced disk,
   * or a node never used)? Sent with each claim and release (witness-server.ts: a brand-new copy
   * is refused once the cluster holds data). Absent: never.
   */
  readonly brandNew?: () => boolean;
}

interface Held {
  readonly cb: (err: Error | null) => void;
  readonly timer: NodeJS.Timeout;
  readonly read: boolean;
}

function eio(why: string): Error {
  return Object.assign(new Error(why), { code: 'EIO' });
}

export class QuorumGate {
  private current: QuorumState = 'alone';
  private held: Held[] = [];
  private retry: NodeJS.Timeout | undefined;
  /** The witness gave this node the grant and it has not given it back yet. */
  private holdsGrant = false;
  /**
   * Since start-up this node has not given a grant back: one it claimed before a restart may still
   * be held at the witness (it lives in the witness's file, not here), so the first in-sync gives
   * it back too — a release by a node that holds nothing changes nothing at the witness.
   */
  private grantFromBefore = true;
  private releasing = false;
  private reason = 'starting';
  /** This copy may be older than the peer's (see the file comment): reads wait too. */
  private maybeOld = false;

  constructor(private readonly o: QuorumOptions) {
    // Until the peer is seen, a node with a witness must ask before writing alone, and before
    // serving reads (it cannot know whether the peer wrote alone while it was down).
    if (o.witness) {
      this.current = 'no-quorum';
      this.maybeOld = true;
    }
  }

  get state(): QuorumState {
    return this.current;
  }

  get grantHeld(): boolean {
    return this.holdsGrant;
  }

  /** For status: the state and why. */
  describe(): QuorumDescription {
    return { state: this.current, reason: this.reason, witness: this.o.witness !== undefined, grantHeld: this.holdsGrant };
  }

  /** Writes may go on (mirrored or alone) right now. */
  get writable(): boolean {
    return this.current === 'connected' || this.current === 'alone';
  }

  /** Reads may go on right now: not on a node whose copy may be old (see the file comment). */
  get readable(): boolean {
    return this.current === 'connected' || this.current === 'alone' || !this.maybeOld;
  }

  whenWritable(cb: (err: Error | null) => void): void {
    if (this.writable) return cb(null);
    this.hold(cb, false);
  }

  whenReadable(cb: (err: Error | null) => void): void {
    if (this.readable) return cb(null);
    this.hold(cb, true);
  }

  peerConnected(): void {
    clearTimeout(this.retry);
    // The connection decides what is old (a resync marks it); reads are safe from here on.
    this.maybeOld = false;
    this.set('connected', 'peer connected');
  }

  /** The peer is gone; `leaving`: it said so first (graceful stop), so this node goes on alone. */
  peerLost(leaving: boolean): void {
    // A stopping node's own link going down is no reason to claim: it would take the grant from
    // under the peer it just told it is leaving (found by the demo test: the leaver won the race to
    // the witness, and could later have written alone with its old copy).
    if (this.stopped) return;
    if (!this.o.witness) return this.set('alone', 'peer gone; no witness configured: writing alone');
    if (leaving) {
      this.set('alone', 'peer left gracefully: writing alone (last man standing)');
      // Tell the witness too, so the leaver cannot write alone later while this node is away.
      void this.claim(true);
      return;
    }
    this.set('claiming', 'peer gone: asking the witness');
    void this.claim(false);
  }

  /** The pair is connected and in sync again: a grant held is given back. */
  inSync(): void {
    if (!(this.holdsGrant || this.grantFromBefore) || this.releasing || !this.o.witness) return;
    this.releasing = true;
    // A claim waits for this answer (see claim): the witness must not see them the other way round.
    this.release = this.o.witness.release(this.brandNew()).then(
      () => {
        this.releasing = false;
        const held = this.holdsGrant;
        this.holdsGrant = false;
        this.grantFromBefore = false;
        if (held) this.o.log.info('in sync with the peer again: write grant given back to the witness');
      },
      (err: unknown) => {
        this.releasing = false;
        this.o.log.warn({ err: (err as Error).message }, 'could not give the write grant back yet; trying again later');
        clearTimeout(this.retry);
        this.retry = setTimeout(() => {
          if (this.current === 'connected') this.inSync();
        }, this.o.retryMs);
      },
    );
  }

  /**
   * Before a graceful leave: a grant this node may hold (now, or from before its start) goes back
   * first. The peer goes on alone without asking; were the grant still here, this node,
   * restarted apart from its peer, would get it again and both would write alone (found by the
   * protocol model, model/replication.pml: LEAVING). Resolves whether no grant is held here.
   */
  async giveBack(): Promise<boolean> {
    if (!this.o.witness) return true;
    await this.release; // one already on its way (it never rejects)
    if (!(this.holdsGrant || this.grantFromBefore)) return true;
    try {
      await this.o.witness.release(this.brandNew());
    } catch (err) {
      this.o.log.warn({ err: (err as Error).message }, 'could not give the write grant back before leaving');
      return false;
    }
    if (this.holdsGrant) this.o.log.info('leaving: write grant given back to the witness');
    this.holdsGrant = false;
    this.grantFromBefore = false;
    return true;
  }

  /** The node is stopping: nothing more is asked of the witness. */
  private stopped = false;
  /** A release on its way to the witness (inSync), if any. */
  private release: Promise<void> | undefined;

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    for (const h of this.held.splice(0)) {
      clearTimeout(h.timer);
      h.cb(eio('node stopping'));
    }
  }

  private async claim(bestEffort: boolean): Promise<void> {
    clearTimeout(this.retry);
    try {
      // A release still on its way could reach the witness after this claim and undo its grant.
      await this.release;
      const answer = await this.o.witness!.claim(this.brandNew());
      if (this.current === 'connected') return; // the peer came back meanwhile
      if (answer.granted) {
        this.holdsGrant = true;
        this.maybeOld = false;
        this.set('alone', `witness granted writing alone: ${answer.reason}`);
      } else if (!bestEffort) {
        this.maybeOld = true;
        this.set('denied', `witness refused: ${answer.reason}`);
        this.scheduleClaim();
      }
    } catch (err) {
      if (this.current === 'connected' || bestEffort) return;
      this.set('no-quorum', `neither peer nor witness reachable (${(err as Error).message})`);
      this.scheduleClaim();
    }
  }

  private brandNew(): boolean {
    return this.o.brandNew?.() ?? false;
  }

  private scheduleClaim(): void {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => {
      if (this.current !== 'connected' && this.current !== 'alone') void this.claim(false);
    }, this.o.retryMs);
  }

  private set(state: QuorumState, reason: string): void {
    const changed = state !== this.current;
    this.current = state;
    this.reason = reason;
    if (changed) {
      const level = state === 'connected' || state === 'alone' ? 'info' : 'warn';
      this.o.log[level]({ quorum: state, reason }, `quorum: ${state}`);
    }
    const keep: Held[] = [];
    for (const h of this.held) {
      const go = h.read ? this.readable : this.writable;
      if (go) {
        clearTimeout(h.timer);
        h.cb(null);
      } else if (this.o.onNoQuorum === 'io-error' && state !== 'claiming') {
        clearTimeout(h.timer);
        h.cb(eio(`no quorum: ${reason}`));
      } else keep.push(h);
    }
    this.held = keep;
  }

  private hold(cb: (err: Error | null) => void, read: boolean): void {
    if (this.o.onNoQuorum === 'io-error' && this.current !== 'claiming') return cb(eio(`no quorum: ${this.reason}`));
    const h: Held = {
      cb,
      read,
      timer: setTimeout(() => {
        this.held = this.held.filter((x) => x !== h);
        cb(eio(`no quorum for ${this.o.suspendMs} ms: ${this.reason}`));
      }, this.o.suspendMs),
    };
    this.held.push(h);
  }
}
