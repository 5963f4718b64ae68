// A volume change the link cut short: the asking node records it as `unfinished` (volumes.json)
// before it sends it, and clears it once it applied it or the peer refused it. If the link is
// lost (or the answer is late) in between, the next HELLOs tell what happened: the peer's
// volumes are ours with the change applied (it applied it: this node finishes it), or they
// match ours (it never got it: the change is dropped). Anything else is a mismatch no recorded
// change explains, refused as before. Pure: volume lists and changes in, a verdict out.
import type { VolumeOp } from './volume-ops.js';

/** A volume as a HELLO lists it: what two nodes must agree on to link. */
export interface ListedVolume {
  readonly name: string;
  readonly size: number;
}

/**
 * Does `op`, applied to the volumes `before`, give exactly `after` (names and sizes)? A create
 * must add a name `before` lacks, a resize and a delete must find theirs in `before`.
 */
export function explains(op: VolumeOp, before: readonly ListedVolume[], after: readonly ListedVolume[]): boolean {
  const changed = new Map(before.map((v) => [v.name, v.size]));
  if (changed.has(op.name) !== (op.op !== 'create')) return false;
  if (op.op === 'delete') changed.delete(op.name);
  else changed.set(op.name, op.size!);
  return after.length === changed.size && after.every((v) => changed.get(v.name) === v.size);
}

/** What to do with a peer's HELLO (same cluster, the expected node), as far as volume changes go. */
export type HelloVerdict =
  /** Nothing in the way: the link may come up (a recorded change the peer never applied is then dropped). */
  | { readonly kind: 'link' }
  /** A difference no recorded change explains: refused with it, as before (a manual repair). */
  | { readonly kind: 'mismatch' }
  /** A change is being applied here: refused for now; the next attempt sees its result (a dialer does not even dial then: peer-link.ts holdDial). */
  | { readonly kind: 'wait'; readonly busy: string }
  /** Our recorded change explains the difference (the peer applied it): finish it here, refuse meanwhile. */
  | { readonly kind: 'finish'; readonly op: VolumeOp }
  /** Our recorded change explains it, but finishing it here failed: refused with why. */
  | { readonly kind: 'unfinishable'; readonly op: VolumeOp; readonly why: string }
  /** The peer's recorded change explains it (applied here): refused, our HELLO shown, so the peer finishes it. */
  | { readonly kind: 'peer-finishes'; readonly op: VolumeOp };

export interface HelloFacts {
  /** Why the HELLOs' volumes differ, or undefined when they match. */
  readonly mismatch: string | undefined;
  readonly ours: readonly ListedVolume[];
  readonly theirs: readonly ListedVolume[];
  /** The change this node recorded as unfinished, if any. */
  readonly ourUnfinished?: VolumeOp;
  /** The change the peer's HELLO says it recorded as unfinished, if any. */
  readonly theirUnfinished?: VolumeOp;
  /** The change this node is applying now (its own, the peer's, or one it finishes), if any. */
  readonly busy?: string;
  /** Why finishing our recorded change failed earlier (it is not tried again until a restart). */
  readonly failed?: string;
}

export function helloVerdict(f: HelloFacts): HelloVerdict {
  // A HELLO taken while a change is half applied here may list it either way: wait for the result.
  if (f.busy !== undefined) return { kind: 'wait', busy: f.busy };
  if (f.mismatch === undefined) return { kind: 'link' };
  const ours = f.ourUnfinished;
  if (ours && explains(ours, f.ours, f.theirs)) return f.failed === undefined ? { kind: 'finish', op: ours } : { kind: 'unfinishable', op: ours, why: f.failed };
  const theirs = f.theirUnfinished;
  if (theirs && explains(theirs, f.theirs, f.ours)) return { kind: 'peer-finishes', op: theirs };
  return { kind: 'mismatch' };
}
