// The overlap-ordering rule on its own (src/replication/in-flight.ts), with two simulated nodes:
// each has a tracker and a disk of byte tags, their link is two FIFO queues, and fast-check picks
// every interleaving of write starts, frame deliveries and disk completions. Whatever the order,
// both disks end identical, and one node's overlapping writes land in the order they started.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InFlightTracker, subtract, type InFlight } from '../../src/replication/in-flight.js';

const DISK = 32;

interface WriteOp {
  node: 0 | 1;
  offset: number;
  length: number;
}

interface SimNode {
  tracker: InFlightTracker;
  disk: Int32Array;
}

type Frame = { kind: 'write'; id: bigint; offset: number; length: number; tag: number } | { kind: 'ack'; id: bigint };

/** Runs `ops` on two nodes in the interleaving `choices` picks; returns both disks. */
function simulate(ops: WriteOp[], choices: number[]): { disks: [Int32Array, Int32Array]; steps: number } {
  // Node 1's name sorts later: its local writes win overlaps (node 0's peer writes then lose).
  const nodes: [SimNode, SimNode] = [
    { tracker: new InFlightTracker(false), disk: new Int32Array(DISK).fill(-1) },
    { tracker: new InFlightTracker(true), disk: new Int32Array(DISK).fill(-1) },
  ];
  const links: [Frame[], Frame[]] = [[], []]; // links[n]: frames travelling to node n
  const diskOps: Array<{ node: number; from: number; to: number; tag: number; done: () => void }> = [];
  const local = new Map<bigint, { entry: InFlight; node: number; disk: boolean; peer: boolean }>();
  let next = 0;
  let step = 0;
  const piece = (n: number, tag: number) => (from: number, to: number, done: (e: Error | null) => void) => diskOps.push({ node: n, from, to, tag, done: () => done(null) });
  const finish = (w: { entry: InFlight; node: number; disk: boolean; peer: boolean }): void => {
    if (w.disk && w.peer) nodes[w.node]!.tracker.untrack(w.entry);
  };
  for (; step < 20_000; step++) {
    const actions: Array<() => void> = [];
    if (next < ops.length) {
      actions.push(() => {
        const tag = next++;
        const op = ops[tag]!;
        const id = BigInt(tag);
        const me = nodes[op.node];
        const entry = me.tracker.track(op.offset, op.length, 'local', id);
        const w = { entry, node: op.node, disk: false, peer: false };
        local.set(id, w);
        links[1 - op.node]!.push({ kind: 'write', id, offset: op.offset, length: op.length, tag });
        me.tracker.apply(entry, piece(op.node, tag), () => ((w.disk = true), finish(w)));
      });
    }
    for (const n of [0, 1] as const) {
      if (links[n].length === 0) continue;
      actions.push(() => {
        const f = links[n].shift()!;
        if (f.kind === 'ack') {
          const w = local.get(f.id)!;
          w.peer = true;
          nodes[n].tracker.answered(w.entry);
          return finish(w);
        }
        const t = nodes[n].tracker;
        const entry = t.track(f.offset, f.length, 'peer', f.id);
        t.apply(entry, piece(n, f.tag), () => {
          t.untrack(entry);
          links[1 - n]!.push({ kind: 'ack', id: f.id });
        });
      });
    }
    diskOps.forEach((d, i) =>
      actions.push(() => {
        diskOps.splice(i, 1);
        nodes[d.node]!.disk.fill(d.tag, d.from, d.to);
        d.done();
      }),
    );
    if (actions.length === 0) break;
    actions[(choices[step] ?? 0) % actions.length]!();
  }
  return { disks: [nodes[0].disk, nodes[1].disk], steps: step };
}

const writeOp = fc.record({
  node: fc.constantFrom(0 as const, 1 as const),
  offset: fc.integer({ min: 0, max: DISK - 1 }),
  length: fc.integer({ min: 1, max: 12 }),
}).map((w) => ({ ...w, length: Math.min(w.length, DISK - w.offset) }));

describe('overlap ordering (in-flight tracker)', () => {
  it('two nodes end with identical disks in every interleaving', () => {
    fc.assert(
      fc.property(fc.array(writeOp, { minLength: 1, maxLength: 12 }), fc.array(fc.nat(), { maxLength: 400 }), (ops, choices) => {
        const { disks, steps } = simulate(ops, choices);
        expect(steps).toBeLessThan(20_000); // everything completed
        expect(Array.from(disks[0])).toEqual(Array.from(disks[1]));
      }),
      { numRuns: 400 },
    );
  });

  it('writes from one node land in the order they started', () => {
    fc.assert(
      fc.property(fc.array(writeOp.map((w) => ({ ...w, node: 0 as const })), { minLength: 1, maxLength: 10 }), fc.array(fc.nat(), { maxLength: 300 }), (ops, choices) => {
        const { disks } = simulate(ops, choices);
        const expected = new Int32Array(DISK).fill(-1);
        ops.forEach((op, tag) => expected.fill(tag, op.offset, op.offset + op.length));
        expect(Array.from(disks[0])).toEqual(Array.from(expected));
        expect(Array.from(disks[1])).toEqual(Array.from(expected));
      }),
      { numRuns: 300 },
    );
  });

  it('a concurrent pair: the later-sorting node wins on both, the other skips the shared bytes', () => {
    // Both start before either frame arrives: concurrent on both nodes.
    const { disks } = simulate(
      [
        { node: 0, offset: 0, length: 8 },
        { node: 1, offset: 4, length: 8 },
      ],
      [0, 0],
    );
    const expected = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, ...new Array(DISK - 12).fill(-1)];
    expect(Array.from(disks[0])).toEqual(expected);
    expect(Array.from(disks[1])).toEqual(expected);
  });

  it('a resync range waits for earlier overlapping changes, and later ones wait for it', () => {
    const t = new InFlightTracker(true);
    const order: string[] = [];
    const w1 = t.track(0, 8, 'peer', 1n);
    const r = t.track(4, 8, 'resync', 2n);
    const w2 = t.track(10, 4, 'local', 3n);
    t.afterEarlier(r, () => order.push('resync'));
    t.afterEarlier(w2, () => order.push('w2'));
    expect(order).toEqual([]);
    t.release(w1);
    expect(order).toEqual(['resync']);
    t.release(r);
    expect(order).toEqual(['resync', 'w2']);
  });

  it('subtract cuts pieces out of a range', () => {
    expect(subtract(0, 10, [])).toEqual([[0, 10]]);
    expect(subtract(0, 10, [{ offset: 2, end: 4 }, { offset: 6, end: 12 }])).toEqual([
      [0, 2],
      [4, 6],
    ]);
    expect(subtract(0, 10, [{ offset: 0, end: 10 }])).toEqual([]);
  });
});
