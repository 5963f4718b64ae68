// The pure part of settling a volume change a link loss cut short: does a recorded change
// explain how the peer's volumes differ from ours, and what the link does with a HELLO then.
import { describe, expect, it } from 'vitest';
import { explains, helloVerdict, type ListedVolume } from '../../src/replication/unfinished-change.js';
import { parseVolumeOp } from '../../src/replication/volume-ops.js';

const M = 2 ** 20;
const gen = '0123456789abcdef';
const list = (o: Record<string, number>): ListedVolume[] => Object.entries(o).map(([name, size]) => ({ name, size }));
const ours = list({ vol0: 16 * M, vol1: 32 * M });
const create = parseVolumeOp({ op: 'create', name: 'vol2', size: 8 * M, generation: gen });
const resize = parseVolumeOp({ op: 'resize', name: 'vol1', size: 64 * M });
const del = parseVolumeOp({ op: 'delete', name: 'vol0' });

describe('does a recorded change explain the peer\'s volumes', () => {
  it('exactly: a create adds its name and size, a resize sets the size, a delete removes the name', () => {
    expect(explains(create, ours, list({ vol0: 16 * M, vol1: 32 * M, vol2: 8 * M }))).toBe(true);
    expect(explains(resize, ours, list({ vol0: 16 * M, vol1: 64 * M }))).toBe(true);
    expect(explains(del, ours, list({ vol1: 32 * M }))).toBe(true);
  });

  it('not when anything else differs too, or the change does not fit what we have', () => {
    // The right change and one more difference.
    expect(explains(create, ours, list({ vol0: 16 * M, vol1: 64 * M, vol2: 8 * M }))).toBe(false);
    expect(explains(create, ours, list({ vol1: 32 * M, vol2: 8 * M }))).toBe(false);
    expect(explains(del, ours, list({ vol1: 32 * M, vol9: 4 * M }))).toBe(false);
    // Another size than the change's.
    expect(explains(create, ours, list({ vol0: 16 * M, vol1: 32 * M, vol2: 16 * M }))).toBe(false);
    expect(explains(resize, ours, list({ vol0: 16 * M, vol1: 48 * M }))).toBe(false);
    // No change at all on the peer: not applied there.
    expect(explains(create, ours, ours)).toBe(false);
    expect(explains(resize, ours, ours)).toBe(false);
    expect(explains(del, ours, ours)).toBe(false);
    // A create of a name we have, a resize or delete of one we lack.
    expect(explains(parseVolumeOp({ op: 'create', name: 'vol1', size: 64 * M, generation: gen }), ours, list({ vol0: 16 * M, vol1: 64 * M }))).toBe(false);
    expect(explains(parseVolumeOp({ op: 'resize', name: 'vol2', size: 8 * M }), ours, list({ vol0: 16 * M, vol1: 32 * M, vol2: 8 * M }))).toBe(false);
    expect(explains(parseVolumeOp({ op: 'delete', name: 'vol9' }), ours, ours)).toBe(false);
    // A repeated name on the peer cannot stand in for a missing one.
    expect(explains(del, ours, list({ vol1: 32 * M }).concat(list({ vol1: 32 * M })))).toBe(false);
  });
});

describe('what the link does with a peer HELLO', () => {
  const peerAfter = list({ vol0: 16 * M, vol1: 32 * M, vol2: 8 * M });
  it('a change here in progress: waits; no difference: links (a recorded change is then dropped)', () => {
    expect(helloVerdict({ mismatch: 'x', ours, theirs: peerAfter, ourUnfinished: create, busy: 'finishing it' })).toEqual({ kind: 'wait', busy: 'finishing it' });
    expect(helloVerdict({ mismatch: undefined, ours, theirs: ours, busy: 'grow volume vol1' })).toEqual({ kind: 'wait', busy: 'grow volume vol1' });
    expect(helloVerdict({ mismatch: undefined, ours, theirs: ours, ourUnfinished: create })).toEqual({ kind: 'link' });
  });

  it('our recorded change explains it: finish here (or refuse, if finishing failed); the peer\'s: it finishes', () => {
    expect(helloVerdict({ mismatch: 'peer has volume "vol2", we do not', ours, theirs: peerAfter, ourUnfinished: create })).toEqual({ kind: 'finish', op: create });
    expect(helloVerdict({ mismatch: 'x', ours, theirs: peerAfter, ourUnfinished: create, failed: 'no room' })).toEqual({ kind: 'unfinishable', op: create, why: 'no room' });
    expect(helloVerdict({ mismatch: 'peer lacks some of our volumes', ours: peerAfter, theirs: ours, theirUnfinished: create })).toEqual({ kind: 'peer-finishes', op: create });
  });

  it('a difference no recorded change explains is a mismatch, as before', () => {
    expect(helloVerdict({ mismatch: 'x', ours, theirs: peerAfter })).toEqual({ kind: 'mismatch' });
    expect(helloVerdict({ mismatch: 'x', ours, theirs: peerAfter, ourUnfinished: resize })).toEqual({ kind: 'mismatch' });
    // The peer's claim is checked the other way round: its change must turn its volumes into ours.
    expect(helloVerdict({ mismatch: 'x', ours, theirs: peerAfter, theirUnfinished: create })).toEqual({ kind: 'mismatch' });
  });
});
