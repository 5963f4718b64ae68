// The activity log: its block format (torn writes survive), batching and eviction, and the
// recovery a restart after a crash performs (extents become dirty bits, checksum resync asked).
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/index.js';
import { ActivityLog, AL_BLOCK, decodeAlBlock, encodeAlBlock, readAlRecord } from '../../src/meta/activity-log.js';
import { VolumeMeta } from '../../src/meta/volume-meta.js';

const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-al-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const MiB = 2 ** 20;
const begin = (al: ActivityLog, off: number, len: number) => new Promise<void>((res, rej) => al.begin(off, len, (e) => (e ? rej(e) : res())));

describe('activity log blocks', () => {
  it('round-trip, and a damaged or empty block reads as absent', () => {
    const rec = { sequence: 7n, extentBytes: 4 * MiB, extents: [3, 1, 4000] };
    const b = encodeAlBlock(rec);
    expect(decodeAlBlock(b)).toEqual(rec);
    b[30] = b[30]! ^ 1;
    expect(decodeAlBlock(b)).toBeUndefined();
    expect(decodeAlBlock(Buffer.alloc(AL_BLOCK))).toBeUndefined();
  });

  it('the newer of the two blocks wins; a torn newer block leaves the older one', () => {
    const path = join(dir, 'blocks');
    const fd = openSync(path, 'w+');
    writeSync(fd, encodeAlBlock({ sequence: 4n, extentBytes: MiB, extents: [1] }), 0, AL_BLOCK, 0);
    writeSync(fd, encodeAlBlock({ sequence: 5n, extentBytes: MiB, extents: [2] }), 0, AL_BLOCK, AL_BLOCK);
    expect(readAlRecord(fd, 0)?.extents).toEqual([2]);
    writeSync(fd, Buffer.alloc(100, 0xff), 0, 100, AL_BLOCK + 50); // torn
    expect(readAlRecord(fd, 0)?.extents).toEqual([1]);
    closeSync(fd);
  });
});

describe('ActivityLog', () => {
  const open = (slots: number) => {
    const fd = openSync(join(dir, `log-${slots}-${Math.random()}`), 'w+');
    return { fd, al: new ActivityLog({ fd, at: 0, extentBytes: 4 * MiB, slots, sequence: 0n }) };
  };

  it('writes once for a batch of new extents, nothing for extents already logged', async () => {
    const { fd, al } = open(8);
    await Promise.all([begin(al, 0, 4096), begin(al, 4 * MiB, 4096), begin(al, 4 * MiB + 8192, 4096), begin(al, 9 * MiB, 4096)]);
    expect(al.updates).toBe(1);
    expect([...al.extents].sort()).toEqual([0, 1, 2]);
    expect([...(readAlRecord(fd, 0)?.extents ?? [])].sort()).toEqual([0, 1, 2]);
    await begin(al, 100, 4096);
    expect(al.updates).toBe(1);
    expect(begin(al, 4 * MiB - 4096, 8192)).resolves.toBeUndefined(); // spans extents 0 and 1, both logged
    closeSync(fd);
  });

  it('frozen (the disk failed): keeps naming its extents, evicts none, lets writes through without logging', async () => {
    const { fd, al } = open(2);
    await begin(al, 0, 4096); // extent 0
    await begin(al, 4 * MiB, 4096); // extent 1
    al.end(0, 4096);
    al.end(4 * MiB, 4096); // both idle: evictable
    const updates = al.updates;
    al.freeze();
    await begin(al, 20 * MiB, 4096); // extent 5: would evict extent 0
    await begin(al, 0, 4096);
    al.end(20 * MiB, 4096);
    al.end(0, 4096);
    expect(al.updates).toBe(updates);
    expect([...(readAlRecord(fd, 0)?.extents ?? [])].sort()).toEqual([0, 1]);
    expect([...al.extents].sort()).toEqual([0, 1]);
    closeSync(fd);
  });

  it('evicts the least recently used idle extent when full, and makes a write wait while every slot is busy', async () => {
    const { fd, al } = open(2);
    await begin(al, 0, 4096); // extent 0
    await begin(al, 4 * MiB, 4096); // extent 1
    al.end(0, 4096); // extent 0 idle
    await begin(al, 8 * MiB, 4096); // extent 2 replaces 0
    expect([...al.extents].sort()).toEqual([1, 2]);
    let through = false;
    const waiting = begin(al, 12 * MiB, 4096).then(() => (through = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(through).toBe(false); // extents 1 and 2 have writes in flight
    al.end(4 * MiB, 4096);
    await waiting;
    expect([...al.extents].sort()).toEqual([2, 3]);
    expect([...(readAlRecord(fd, 0)?.extents ?? [])].sort()).toEqual([2, 3]);
    closeSync(fd);
  });
});

describe('VolumeMeta recovery from the activity log', () => {
  const id = { cluster: 'c', node: 'a', volumeSize: 256 * MiB, grain: 4096 };
  const hot = () => Hotpath.create({ bitmaps: [VolumeMeta.bitsFor(id.volumeSize, id.grain)] });

  it('a restart without a clean stop marks the logged extents dirty and asks for a checksum resync', async () => {
    const path = join(dir, 'crash.meta');
    const m = VolumeMeta.open(path, id, hot());
    expect(m.recoveredExtents).toBe(0);
    await begin(m.activityLog, 5 * 4 * MiB + 123, 4096);
    await begin(m.activityLog, 63 * 4 * MiB, 4096); // the last extent
    // No close(): the process "dies" here.
    const again = VolumeMeta.open(path, id, hot());
    expect(again.recoveredExtents).toBe(2);
    expect(again.bitmap.count()).toBe(2 * 1024);
    expect(again.bitmap.runs(0, Infinity)).toEqual([
      { start: 5 * 1024, length: 1024 },
      { start: 63 * 1024, length: 1024 },
    ]);
    expect(again.checksumResync).toBe(true);
    again.close();
    // The log was emptied and the bits are durable: a further restart finds the same, no more.
    const third = VolumeMeta.open(path, id, hot());
    expect(third.recoveredExtents).toBe(0);
    expect(third.bitmap.count()).toBe(2 * 1024);
    third.saveIdentity({ checksumResync: false });
    third.close();
  });

  it('a clean stop leaves nothing to recover', async () => {
    const path = join(dir, 'clean.meta');
    const m = VolumeMeta.open(path, id, hot());
    await begin(m.activityLog, 0, 4096);
    m.activityLog.end(0, 4096);
    m.close();
    const again = VolumeMeta.open(path, id, hot());
    expect(again.recoveredExtents).toBe(0);
    expect(again.bitmap.count()).toBe(0);
    expect(again.checksumResync).toBe(false);
    again.close();
  });

  it('a stop whose data flush failed (closeUnclean) is recovered at the next start as a crash is', async () => {
    const path = join(dir, 'unclean.meta');
    const m = VolumeMeta.open(path, id, hot());
    await begin(m.activityLog, 3 * 4 * MiB, 4096);
    m.activityLog.end(3 * 4 * MiB, 4096); // written, but its flush failed: the log must keep naming it
    m.closeUnclean();
    const again = VolumeMeta.open(path, id, hot());
    expect(again.stoppedUncleanly).toBe(true);
    expect(again.recoveredExtents).toBe(1);
    expect(again.bitmap.runs(0, Infinity)).toEqual([{ start: 3 * 1024, length: 1024 }]);
    expect(again.checksumResync).toBe(true);
    again.close();
  });
});
