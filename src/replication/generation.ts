// Generation identifiers (DRBD's UUIDs) and what they decide when two nodes meet. Pure.
//
//   current  — names the data as it is now on this node
//   bitmap   — the `current` the peer last had in common with us; set when this node starts
//              tracking changes alone (the dirty bitmap is relative to it), zero otherwise
//   history  — the two `bitmap` values before, for recognising older common ancestors
import { DiskState, newGenerationId, type Generation } from '../meta/volume-meta.js';

export const NO_GENERATION = '0000000000000000';

export interface NodeGeneration {
  readonly node: string;
  readonly generation: Generation;
  readonly state: DiskState;
  /** Does the node's dirty bitmap have bits set? */
  readonly dirty: boolean;
  /**
   * The node died since the pair was last in sync (crash, power cut: its superblock's
   * checksum-resync flag): its copy may lack writes it acknowledged but never flushed.
   */
  readonly crashed?: boolean;
}

export type SyncDecision =
  /**
   * Same data lineage: nothing to copy unless bits are set (then a bitmap resync, `source` names
   * who sends: the consistent side when the other is Inconsistent — a full sync cut short — else
   * the side that did not crash when the other did — a power cut may have taken writes from it
   * that the survivor holds — else the node whose name sorts first).
   */
  | { kind: 'in-sync'; resync: boolean; source: string }
  /** One side changed alone since they parted: copy its dirty bits' ranges from `source`. */
  | { kind: 'bitmap'; source: string }
  /** One side is new or too far behind for a bitmap: copy everything from `source`. */
  | { kind: 'full'; source: string }
  /** Both are brand new: they agree to be identical (both volumes are empty). */
  | { kind: 'initial'; source: string }
  /** Both wrote while apart: nothing is overwritten; an operator (or policy) must choose. */
  | { kind: 'split-brain' }
  /** No common history: these are not replicas of one volume. */
  | { kind: 'unrelated' }
  /**
   * The generations name `node` as the source, but its copy is not consistent (a sync into it
   * was cut short): copying from it would spread partial data over the other copy, so nothing
   * is copied and an operator decides (`nbd-mirror resolve` on `node` makes it a full-sync target).
   */
  | { kind: 'no-consistent-source'; node: string };

export type SplitBrainPolicy = { policy: 'manual' } | { policy: 'discard-least-changes' } | { policy: 'discard-younger' } | { policy: 'discard-node'; node: string };

export interface SplitBrainSide {
  readonly node: string;
  /** Bytes it changed while apart. */
  readonly dirtyBytes: number;
  /** When it started writing alone (ms since 1970; 0: unknown). */
  readonly trackingSince: number;
}

/**
 * Which node gives up its changes after a split brain, by policy; null leaves it to an operator
 * (`manual`, or a tie the policy cannot break). The same answer on both nodes.
 */
export function splitBrainLoser(p: SplitBrainPolicy, x: SplitBrainSide, y: SplitBrainSide): { loser: string | null; why: string } {
  switch (p.policy) {
    case 'manual':
      return { loser: null, why: 'policy manual: an operator chooses (nbd-mirror resolve)' };
    case 'discard-node':
      return { loser: p.node, why: `policy discard-node ${p.node}` };
    case 'discard-least-changes':
      if (x.dirtyBytes === y.dirtyBytes) return { loser: null, why: 'discard-least-changes: both changed as much; an operator chooses' };
      return { loser: x.dirtyBytes < y.dirtyBytes ? x.node : y.node, why: 'policy discard-least-changes' };
    case 'discard-younger':
      if (x.trackingSince === y.trackingSince || !x.trackingSince || !y.trackingSince) return { loser: null, why: 'discard-younger: cannot tell who started writing alone later; an operator chooses' };
      return { loser: x.trackingSince > y.trackingSince ? x.node : y.node, why: 'policy discard-younger (the node that started writing alone later)' };
  }
}

/** Called when a node starts writing without its peer: the bitmap now counts from `current`. */
export function startTracking(g: Generation): Generation {
  if (g.bitmap !== NO_GENERATION) return g; // already tracking since the last split
  return { current: newGenerationId(), bitmap: g.current, history: g.history };
}

/** Called when a resync has made this node identical to the source whose current is `sourceCurrent`. */
export function finishSync(g: Generation, sourceCurrent: string): Generation {
  const history: [string, string] = g.bitmap !== NO_GENERATION ? [g.bitmap, g.history[0]] : g.history;
  return { current: sourceCurrent, bitmap: NO_GENERATION, history };
}

/**
 * May a copy in this disk state be copied from? Only a consistent one: UpToDate, or Outdated
 * (whole but old). Inconsistent (a sync target cut short) never is; a state added later (a
 * Failed disk) is refused too until it is named here.
 */
export function canBeSource(state: DiskState): boolean {
  return state === DiskState.UpToDate || state === DiskState.Outdated;
}

/**
 * What two nodes must do when they connect; the same answer on both sides. Whatever the
 * generations say, a decision that copies data never names a copy that is not consistent as
 * its source.
 */
export function decide(a: NodeGeneration, b: NodeGeneration): SyncDecision {
  const d = byGeneration(a, b);
  const copies = d.kind === 'bitmap' || d.kind === 'full' || (d.kind === 'in-sync' && d.resync);
  if (!copies) return d;
  const source = d.source === a.node ? a : b;
  return canBeSource(source.state) ? d : { kind: 'no-consistent-source', node: source.node };
}

function byGeneration(a: NodeGeneration, b: NodeGeneration): SyncDecision {
  const first = a.node < b.node ? a : b;
  const ga = a.generation;
  const gb = b.generation;
  if (ga.current === gb.current) {
    const inconsistent = [a, b].filter((n) => n.state === DiskState.Inconsistent);
    const crashed = [a, b].filter((n) => n.crashed === true);
    const suspect = inconsistent.length === 1 ? inconsistent : crashed.length === 1 ? crashed : [];
    const source = suspect.length === 1 ? (suspect[0] === a ? b : a) : first;
    return { kind: 'in-sync', resync: a.dirty || b.dirty, source: source.node };
  }
  // One side tracked its changes from the other's current: a bitmap resync, even when the other
  // is Inconsistent (a resync to it was cut short: the union of bits still covers every difference).
  const aTracked = ga.bitmap !== NO_GENERATION && ga.bitmap === gb.current;
  const bTracked = gb.bitmap !== NO_GENERATION && gb.bitmap === ga.current;
  if (aTracked && !bTracked) return { kind: 'bitmap', source: a.node };
  if (bTracked && !aTracked) return { kind: 'bitmap', source: b.node };
  const aNew = a.state === DiskState.Inconsistent && ga.bitmap === NO_GENERATION && ga.history[0] === NO_GENERATION;
  const bNew = b.state === DiskState.Inconsistent && gb.bitmap === NO_GENERATION && gb.history[0] === NO_GENERATION;
  if (aNew && bNew) return { kind: 'initial', source: first.node };
  if (aNew !== bNew) return { kind: 'full', source: aNew ? b.node : a.node };
  if (ga.bitmap !== NO_GENERATION && ga.bitmap === gb.bitmap) return { kind: 'split-brain' };
  // Each side's history naming the other's current contradicts itself: unrelated, whichever
  // side asks (checking one side first would give the two nodes different answers).
  const aNewer = ga.history.includes(gb.current) && gb.current !== NO_GENERATION;
  const bNewer = gb.history.includes(ga.current) && ga.current !== NO_GENERATION;
  if (aNewer !== bNewer) return { kind: 'full', source: aNewer ? a.node : b.node };
  return { kind: 'unrelated' };
}
