// The verify's walk (VerifyRun) against a scripted peer: the ranges that are holes on both nodes
// are skipped without digests, everything else is asked for digests; a write between the holes
// request and our own lookup keeps its range compared; answers that do not fit are refused.
import { describe, expect, it } from 'vitest';
import { ProtocolViolation } from '../../src/protocol/errors.js';
import type { BlockComparer } from '../../src/replication/block-compare.js';
import type { RateLimiter } from '../../src/replication/rate-limit.js';
import type { HolesAnswer } from '../../src/replication/resync-holes.js';
import { VerifyRun, type VerifyReport } from '../../src/replication/verify.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** A run over a volume of `size` whose own holes are `ours`; every chunk compares equal. */
function harness(size: number, ours: (offset: number, length: number) => HolesAnswer) {
  const holeAsks: Array<{ id: bigint; offset: number; length: number }> = [];
  const digestAsks: Array<{ id: bigint; offset: number; length: number }> = [];
  const lookups: Array<() => void> = [];
  let id = 0n;
  let result: { err: Error | null; report: VerifyReport } | undefined;
  const run = new VerifyRun(
    {
      size,
      blockSize: 4096,
      comparer: { differing: () => [] } as unknown as BlockComparer,
      rate: { take: (_n: number, go: () => void) => go() } as unknown as RateLimiter,
      requestDigests: (i, offset, length) => (digestAsks.push({ id: i, offset, length }), true),
      requestHoles: (i, offset, length) => (holeAsks.push({ id: i, offset, length }), true),
      // Our lookup answers when the test says so (lookups.shift()!()): a write can come first.
      localHoles: (offset, length, done) => void lookups.push(() => done(ours(offset, length))),
      inFlight: () => [],
      readLocal: (_o, _l, done) => done(null, Buffer.alloc(0)),
      releaseLocal: () => undefined,
      nextId: () => ++id,
    },
    (err, report) => (result = { err, report }),
  );
  /** Answers every digest request asked so far (all equal). */
  const answerDigests = () => {
    while (digestAsks.length > 0) run.onDigests(digestAsks.shift()!.id, Buffer.alloc(0));
  };
  return { run, holeAsks, digestAsks, lookups, answerDigests, result: () => result };
}

describe('VerifyRun: the hole walk', () => {
  it('skips what is a hole on both nodes, compares what is data on either, one span of 1 GiB at a time', () => {
    // Ours: holes everywhere but [0, 2 MiB). The peer's: everything but [10 MiB, 11 MiB).
    const t = harness(2 * GiB, (offset, length) => ({ length, holes: offset === 0 ? [{ offset: 2 * MiB, length: length - 2 * MiB }] : [{ offset, length }] }));
    t.run.start();
    expect(t.holeAsks).toEqual([{ id: 1n, offset: 0, length: GiB }]);
    expect(t.digestAsks).toEqual([]);
    t.run.onHoles(1n, 0, GiB, [{ offset: 0, length: 10 * MiB }, { offset: 11 * MiB, length: GiB - 11 * MiB }]);
    t.lookups.shift()!();
    // Data here in [0, 2 MiB), data there in [10, 11 MiB): three chunks; the next span is asked at once.
    expect(t.digestAsks.map((a) => [a.offset, a.length])).toEqual([[0, MiB], [MiB, MiB], [10 * MiB, MiB]]);
    expect(t.holeAsks.at(-1)).toMatchObject({ offset: GiB, length: GiB });
    t.answerDigests();
    t.run.onHoles(t.holeAsks.at(-1)!.id, GiB, GiB, [{ offset: GiB, length: GiB }]);
    t.lookups.shift()!();
    expect(t.digestAsks).toEqual([]);
    const r = t.result()!;
    expect(r.err).toBeNull();
    expect(r.report).toMatchObject({ doneBytes: 2 * GiB, skippedHoleBytes: 2 * GiB - 3 * MiB, outOfSyncBytes: 0 });
  });

  it('a shorter answer (the peer\'s or ours) covers only its part: the next span starts where both knew', () => {
    const t = harness(GiB, (_offset, length) => ({ length: Math.min(length, 256 * MiB), holes: [{ offset: 0, length: Math.min(length, 256 * MiB) }] }));
    t.run.start();
    t.run.onHoles(1n, 0, 512 * MiB, [{ offset: 0, length: 512 * MiB }]);
    t.lookups.shift()!();
    expect(t.holeAsks.at(-1)).toMatchObject({ offset: 256 * MiB, length: 768 * MiB });
    expect(t.digestAsks).toEqual([]);
  });

  it('a write between the holes request and our own lookup keeps its range compared, rounded out to blocks', () => {
    const t = harness(GiB, (offset, length) => ({ length, holes: [{ offset, length }] }));
    t.run.start();
    t.run.touch(5 * MiB + 100, 5 * MiB + 200); // before the answer
    t.run.onHoles(1n, 0, GiB, [{ offset: 0, length: GiB }]);
    t.run.touch(700 * MiB, 700 * MiB + 8192); // after the answer, before our lookup
    t.lookups.shift()!();
    t.run.touch(900 * MiB, 900 * MiB + 4096); // after our lookup: reaches both copies, skipped
    expect(t.digestAsks.map((a) => [a.offset, a.length])).toEqual([[5 * MiB, 4096], [700 * MiB, 8192]]);
    t.answerDigests();
    expect(t.result()!.report).toMatchObject({ doneBytes: GiB, skippedHoleBytes: GiB - 3 * 4096 });
  });

  it('an answer for another range is a protocol violation; one for no open span is dropped; a damaged one is asked again', () => {
    const t = harness(2 * GiB, (offset, length) => ({ length, holes: [{ offset, length }] }));
    t.run.start();
    expect(() => t.run.onHoles(1n, MiB, MiB, [])).toThrow(ProtocolViolation);
    expect(() => t.run.onHoles(1n, 0, GiB + 4096, [])).toThrow(/VERIFY_HOLES answers 0\+1073745920 for 0\+1073741824/);
    expect(() => t.run.onHoles(1n, 0, MiB + 512, [])).toThrow(/VERIFY_HOLES answers 0\+1049088/);
    t.run.onHoles(99n, 0, GiB, []);
    expect(t.lookups).toHaveLength(0);
    t.run.askHolesAgain(1n);
    expect(t.holeAsks).toEqual([{ id: 1n, offset: 0, length: GiB }, { id: 1n, offset: 0, length: GiB }]);
    t.run.abort('peer link lost during verify');
    t.run.onHoles(1n, 0, GiB, []);
    expect(t.lookups).toHaveLength(0);
    expect(t.result()!.err?.message).toBe('peer link lost during verify');
  });
});
