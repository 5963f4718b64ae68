// The hole walk's pure parts: what a source answers from its extents, and how a target reads an
// answer (whole grains only) and walks a span.
import { describe, expect, it } from 'vitest';
import { AllocState } from '../../src/protocol/constants.js';
import { holeGrains, holesAnswer, HoleSpan } from '../../src/replication/resync-holes.js';

const MiB = 1024 * 1024;
const G = 4096;
const HOLE = AllocState.HOLE | AllocState.ZERO;
const DATA = AllocState.DATA;

describe('holesAnswer (the source)', () => {
  it('lists the unallocated extents of the range; allocated zeros are data', () => {
    const extents = [
      { length: MiB, flags: HOLE },
      { length: MiB, flags: DATA },
      { length: MiB, flags: AllocState.ZERO },
      { length: 5 * MiB, flags: HOLE },
    ];
    expect(holesAnswer(8 * MiB, 8 * MiB, extents, G, 64 * MiB, 4096)).toEqual({
      length: 8 * MiB,
      holes: [{ offset: 8 * MiB, length: MiB }, { offset: 11 * MiB, length: 5 * MiB }],
    });
  });

  it('cuts holes to whole grains, except at the volume\'s end', () => {
    const size = 10 * G + 100;
    const extents = [{ length: G + 10, flags: DATA }, { length: 3 * G, flags: HOLE }, { length: 6 * G + 90, flags: HOLE }];
    // [G+10, 4G+10) holds whole grains 2 and 3; [4G+10, end) from grain 5 to the end, partial last grain included.
    expect(holesAnswer(0, size, extents, G, size, 10).holes).toEqual([{ offset: 2 * G, length: 2 * G }, { offset: 5 * G, length: size - 5 * G }]);
  });

  it('extents that stop short (a list at its maximum) cover whole grains; too many holes stop the answer at the next one', () => {
    expect(holesAnswer(0, 16 * MiB, [{ length: MiB, flags: HOLE }, { length: MiB + 100, flags: DATA }], G, 64 * MiB, 10)).toEqual({ length: 2 * MiB, holes: [{ offset: 0, length: MiB }] });
    const alternating = Array.from({ length: 8 }, (_, i) => ({ length: MiB, flags: i % 2 === 0 ? HOLE : DATA }));
    expect(holesAnswer(0, 8 * MiB, alternating, G, 64 * MiB, 2)).toEqual({ length: 4 * MiB, holes: [{ offset: 0, length: MiB }, { offset: 2 * MiB, length: MiB }] });
    // Nothing usable: the whole range, no holes (always a correct answer).
    expect(holesAnswer(0, MiB, [{ length: 100, flags: HOLE }], G, 64 * MiB, 10)).toEqual({ length: MiB, holes: [] });
    expect(holesAnswer(0, MiB, [], G, 64 * MiB, 10)).toEqual({ length: MiB, holes: [] });
  });
});

describe('holeGrains and HoleSpan (the target)', () => {
  it('trusts only whole grains of a hole (up to the volume\'s end)', () => {
    const size = 100 * G + 7;
    expect(holeGrains([{ offset: 10, length: 3 * G }, { offset: 8 * G, length: 100 }, { offset: 90 * G, length: 10 * G + 7 }], G, size)).toEqual([
      { start: 1, end: 3 },
      { start: 90, end: 101 },
    ]);
  });

  it('walks a span forward: in a hole, to its end; in data, to the next hole or the span\'s end', () => {
    const span = new HoleSpan(100, 200, [{ start: 110, end: 120 }, { start: 150, end: 160 }]);
    expect([span.contains(99), span.contains(100), span.contains(199), span.contains(200)]).toEqual([false, true, true, false]);
    expect(span.at(100)).toEqual({ hole: false, end: 110 });
    expect(span.at(110)).toEqual({ hole: true, end: 120 });
    expect(span.at(119)).toEqual({ hole: true, end: 120 });
    expect(span.at(120)).toEqual({ hole: false, end: 150 });
    expect(span.at(155)).toEqual({ hole: true, end: 160 });
    expect(span.at(160)).toEqual({ hole: false, end: 200 });
  });
});
