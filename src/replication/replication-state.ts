// A volume's declared states, in DRBD's vocabulary, and the only transitions allowed between
// them. Every change goes through `VolumeState.set*`, which checks the table (a change outside
// it is a bug: it throws rather than leave the volume in a state nobody planned for) and logs
// the change once with its reason.
//
// Replication (what the pair is doing with this volume):
//   StandAlone  not mirroring and not trying to (before start, after stop)
//   Connecting  the peer is gone: changes are tracked in the dirty bitmap
//   Connected   mirrored, in sync as far as this node knows
//   SyncSource  a resync from this node to the peer runs
//   SyncTarget  a resync from the peer to this node runs
//   Diverged    split brain, unrelated data or no consistent source: not mirrored until resolved
// Disk (what this node's copy is worth):
//   UpToDate     the newest data
//   Outdated     consistent but older than the peer's (it gave up its changes, or was told so)
//   Inconsistent partly copied (a sync into it was cut short) or never synced (a new volume)
//   Failed       the local disk failed a read or write: reads go to the peer, writes go on to
//                the peer with the bits set here; until restart (it is not persisted)
import type { Logger } from '../log.js';
import { DiskState, type VolumeMeta } from '../meta/volume-meta.js';

/** Identity fields saved in the same superblock write as a disk state change. */
export type IdentityChange = Omit<Parameters<VolumeMeta['saveIdentity']>[0], 'state'>;

export type ReplicationState = 'StandAlone' | 'Connecting' | 'Connected' | 'SyncSource' | 'SyncTarget' | 'Diverged';
export type DiskStateName = 'UpToDate' | 'Outdated' | 'Inconsistent' | 'Failed';

export const REPLICATION_TRANSITIONS: Readonly<Record<ReplicationState, readonly ReplicationState[]>> = {
  StandAlone: ['Connecting'],
  Connecting: ['Connected', 'SyncSource', 'SyncTarget', 'Diverged', 'StandAlone'],
  Connected: ['SyncSource', 'SyncTarget', 'Connecting', 'StandAlone'],
  SyncSource: ['Connected', 'Connecting', 'StandAlone'],
  SyncTarget: ['Connected', 'Connecting', 'StandAlone'],
  Diverged: ['Connecting', 'StandAlone'],
};

export const DISK_TRANSITIONS: Readonly<Record<DiskStateName, readonly DiskStateName[]>> = {
  // A sync target becomes Inconsistent; a node that gives up its changes becomes Outdated.
  UpToDate: ['Inconsistent', 'Outdated', 'Failed'],
  // A finished sync, or a new volume that writes alone or meets another new one.
  Inconsistent: ['UpToDate', 'Failed'],
  Outdated: ['Inconsistent', 'UpToDate', 'Failed'],
  // Only a restart (which reopens the disk) leaves Failed.
  Failed: [],
};

/** The persisted disk states (volume-meta.ts) by name; Failed is never persisted. */
export const PERSISTED_DISK: Readonly<Record<Exclude<DiskStateName, 'Failed'>, DiskState>> = {
  UpToDate: DiskState.UpToDate,
  Inconsistent: DiskState.Inconsistent,
  Outdated: DiskState.Outdated,
};

export function diskStateName(s: DiskState): Exclude<DiskStateName, 'Failed'> {
  return s === DiskState.UpToDate ? 'UpToDate' : s === DiskState.Inconsistent ? 'Inconsistent' : 'Outdated';
}

export class IllegalTransition extends Error {
  readonly code = 'MIRROR_ILLEGAL_TRANSITION';
}

export class VolumeState {
  private repl: ReplicationState = 'StandAlone';
  private failed = false;

  /**
   * @param persisted the disk state kept in the volume's metadata (read on every call: the
   *   metadata is the truth across restarts)
   * @param persist writes a new persisted disk state, with `with` in the same write
   */
  constructor(
    private readonly log: Logger,
    private readonly persisted: () => DiskState,
    private readonly persist: (s: DiskState, withState: IdentityChange) => void,
  ) {}

  get replication(): ReplicationState {
    return this.repl;
  }

  get disk(): DiskStateName {
    return this.failed ? 'Failed' : diskStateName(this.persisted());
  }

  /** Moves the replication state; the same state again is no change (not logged). */
  setReplication(next: ReplicationState, reason: string, facts: Record<string, unknown> = {}): void {
    const from = this.repl;
    if (from === next) return;
    if (!REPLICATION_TRANSITIONS[from].includes(next)) throw new IllegalTransition(`replication state ${from} → ${next} is not allowed (${reason})`);
    this.repl = next;
    const level = next === 'Diverged' || (next === 'Connecting' && from !== 'StandAlone') ? 'warn' : 'info';
    this.log[level]({ ...facts, from, to: next, reason }, `volume ${next}: ${reason}`);
  }

  /**
   * Moves the disk state (persisted unless Failed, with the identity fields of `withState` in
   * the same write); the same state again is no change of state (`withState` is still saved).
   */
  setDisk(next: DiskStateName, reason: string, withState: IdentityChange = {}, facts: Record<string, unknown> = {}): void {
    const from = this.disk;
    if (from === next) {
      if (next !== 'Failed' && Object.keys(withState).length > 0) this.persist(PERSISTED_DISK[next], withState);
      return;
    }
    if (!DISK_TRANSITIONS[from].includes(next)) throw new IllegalTransition(`disk state ${from} → ${next} is not allowed (${reason})`);
    if (next === 'Failed') this.failed = true;
    else this.persist(PERSISTED_DISK[next], withState);
    this.log[next === 'Failed' ? 'error' : 'info']({ ...facts, from, to: next, reason }, `disk ${next}: ${reason}`);
  }
}
