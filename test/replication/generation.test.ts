import { describe, expect, it } from 'vitest';
import { DiskState, type Generation } from '../../src/meta/volume-meta.js';
import { decide, finishSync, NO_GENERATION, splitBrainLoser, startTracking, type NodeGeneration } from '../../src/replication/generation.js';

const Z = NO_GENERATION;
const g = (current: string, bitmap = Z, history: [string, string] = [Z, Z]): Generation => ({ current, bitmap, history });
const node = (name: string, generation: Generation, state = DiskState.UpToDate, dirty = false): NodeGeneration => ({ node: name, generation, state, dirty });
const both = (a: NodeGeneration, b: NodeGeneration) => {
  const d = decide(a, b);
  expect(decide(b, a)).toEqual(d); // both sides reach the same answer
  return d;
};

describe('generation identifiers decide the sync direction', () => {
  const common = '1111111111111111';

  it('same current: in sync; bits after a crash still resync, from a deterministic side', () => {
    expect(both(node('a', g(common)), node('b', g(common)))).toEqual({ kind: 'in-sync', resync: false, source: 'a' });
    expect(both(node('a', g(common)), node('b', g(common), DiskState.UpToDate, true))).toEqual({ kind: 'in-sync', resync: true, source: 'a' });
  });

  it('a full sync cut short (the new node took the source\'s current, bits set) resumes from the consistent side', () => {
    // b, a new node, sorts last; a, the new one here, sorts first: the source must still be the consistent side.
    expect(both(node('a', g(common), DiskState.Inconsistent, true), node('b', g(common)))).toEqual({ kind: 'in-sync', resync: true, source: 'b' });
    expect(both(node('a', g(common)), node('b', g(common), DiskState.Inconsistent, true))).toEqual({ kind: 'in-sync', resync: true, source: 'a' });
  });

  it('a resync target cut short (Inconsistent, never synced before) resumes by bitmap, not by a full copy', () => {
    const aAlone = startTracking(g(common));
    expect(both(node('a', aAlone, DiskState.UpToDate, true), node('b', g(common), DiskState.Inconsistent, true))).toEqual({ kind: 'bitmap', source: 'a' });
  });

  it('one side wrote alone (node died, link cut, maintenance): bitmap resync from it', () => {
    const aAlone = startTracking(g(common));
    expect(aAlone.bitmap).toBe(common);
    expect(aAlone.current).not.toBe(common);
    expect(startTracking(aAlone)).toEqual(aAlone); // stays tracking from the same point
    expect(both(node('a', aAlone, DiskState.UpToDate, true), node('b', g(common)))).toEqual({ kind: 'bitmap', source: 'a' });
    expect(both(node('a', g(common)), node('b', startTracking(g(common)), DiskState.UpToDate, true))).toEqual({ kind: 'bitmap', source: 'b' });
  });

  it('both wrote while apart: split brain, never a silent overwrite', () => {
    expect(both(node('a', startTracking(g(common)), DiskState.UpToDate, true), node('b', startTracking(g(common)), DiskState.UpToDate, true))).toEqual({ kind: 'split-brain' });
  });

  it('a fresh empty node joining a used volume gets a full sync; two fresh nodes start identical', () => {
    const fresh = node('b', g('2222222222222222'), DiskState.Inconsistent);
    expect(both(node('a', g(common, Z, ['3333333333333333', Z])), fresh)).toEqual({ kind: 'full', source: 'a' });
    expect(both(node('a', g('4444444444444444'), DiskState.Inconsistent), fresh)).toEqual({ kind: 'initial', source: 'a' });
  });

  it('after a resync the target takes the source current; history remembers the split', () => {
    const a = startTracking(g(common));
    const b = finishSync(g(common), a.current);
    expect(b).toEqual({ current: a.current, bitmap: Z, history: [Z, Z] });
    const aDone = finishSync(a, a.current);
    expect(aDone).toEqual({ current: a.current, bitmap: Z, history: [common, Z] });
    expect(both(node('a', aDone), node('b', b))).toEqual({ kind: 'in-sync', resync: false, source: 'a' });
  });

  it('an older common ancestor in history: full sync from the newer side; none at all: unrelated', () => {
    expect(both(node('a', g('5555555555555555', Z, [common, Z])), node('b', g(common)))).toEqual({ kind: 'full', source: 'a' });
    expect(both(node('a', g('6666666666666666')), node('b', g('7777777777777777')))).toEqual({ kind: 'unrelated' });
  });
});

describe('split-brain policies name the same loser on both nodes', () => {
  const a = { node: 'a', dirtyBytes: 8192, trackingSince: 1000 };
  const b = { node: 'b', dirtyBytes: 4096, trackingSince: 2000 };
  const loser = (p: Parameters<typeof splitBrainLoser>[0], x = a, y = b) => {
    const v = splitBrainLoser(p, x, y);
    expect(splitBrainLoser(p, y, x).loser).toBe(v.loser);
    return v.loser;
  };

  it('manual leaves it to an operator', () => expect(loser({ policy: 'manual' })).toBeNull());
  it('discard-node names the node', () => expect(loser({ policy: 'discard-node', node: 'a' })).toBe('a'));
  it('discard-least-changes: fewer changed bytes lose; a tie goes to an operator', () => {
    expect(loser({ policy: 'discard-least-changes' })).toBe('b');
    expect(loser({ policy: 'discard-least-changes' }, a, { ...b, dirtyBytes: 8192 })).toBeNull();
  });
  it('discard-younger: the node that started writing alone later loses; unknown times go to an operator', () => {
    expect(loser({ policy: 'discard-younger' })).toBe('b');
    expect(loser({ policy: 'discard-younger' }, a, { ...b, trackingSince: 0 })).toBeNull();
  });
});

describe('an incomplete copy is never a sync source', () => {
  const ids = ['1111111111111111', '2222222222222222', '3333333333333333', Z];
  const states = [DiskState.UpToDate, DiskState.Inconsistent, DiskState.Outdated];

  it('a full-sync target cut short does not become the source of a full sync to a new node', () => {
    // b took a's current for a full sync that was cut short; then a's disk was replaced (new, empty).
    const cutShort = node('b', g(common2, Z, ['4444444444444444', Z]), DiskState.Inconsistent, true);
    const fresh = node('a', g('5555555555555555'), DiskState.Inconsistent);
    expect(both(fresh, cutShort)).toEqual({ kind: 'no-consistent-source', node: 'b' });
    // Two copies of one lineage that are both incomplete: nothing to copy from either.
    expect(both(node('a', g(common2), DiskState.Inconsistent, true), node('b', g(common2), DiskState.Inconsistent, true))).toEqual({ kind: 'no-consistent-source', node: 'a' });
  });

  it('for every pair of generations, states and dirty flags, a decision that copies names a consistent source', () => {
    const gens: Generation[] = [];
    for (const current of ids.slice(0, 3)) for (const bitmap of ids) for (const h0 of ids) gens.push(g(current, bitmap, [h0, Z]));
    let copying = 0;
    for (const ga of gens) {
      for (const gb of gens) {
        for (const sa of states) {
          for (const sb of states) {
            for (const dirty of [false, true]) {
              const a = node('a', ga, sa, dirty);
              const b = node('b', gb, sb, !dirty);
              const d = both(a, b);
              if (d.kind === 'bitmap' || d.kind === 'full' || (d.kind === 'in-sync' && d.resync)) {
                copying++;
                expect((d.source === 'a' ? a : b).state).not.toBe(DiskState.Inconsistent);
              }
            }
          }
        }
      }
    }
    expect(copying).toBeGreaterThan(1000); // the sweep reaches copying decisions, not only refusals
  });
});
const common2 = '6666666666666666';
