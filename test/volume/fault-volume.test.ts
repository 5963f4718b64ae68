// FaultVolume over a real FileVolume: chosen requests fail (the file is left alone) or wait, the
// rest pass through; and the spec parser refuses a bad spec in words a person can act on.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { FaultVolume, type FaultRules } from '../../src/volume/fault-volume.js';
import { parseFaultSpec, rulesFor } from '../../src/volume/fault-spec.js';
import { FileVolume, type IoMode } from '../../src/volume/file-volume.js';
import type { Done } from '../../src/volume/volume.js';

const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-fault-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
const KiB = 1024;

/** The request's outcome: null, or the error it failed with. */
const outcome = (fn: (done: Done) => void) => new Promise<NodeJS.ErrnoException | null>((res) => fn(res));

let opened: FileVolume[] = [];
afterEach(async () => {
  await Promise.all(opened.map((v) => v.close()));
  opened = [];
});

let files = 0;
function faulty(rules: FaultRules, io: IoMode = 'auto'): { v: FaultVolume; path: string } {
  const path = join(dir, `v${files++}.img`);
  const file = FileVolume.open(path, { createSize: 4 * MiB, io });
  opened.push(file);
  return { v: new FaultVolume(file, rules), path };
}

const writeAt = (v: FaultVolume, offset: number, length = 4 * KiB, byte = 0x55) => outcome((d) => v.write(Buffer.alloc(length, byte), offset, false, d));

describe('FaultVolume', () => {
  it('fails a write that overlaps the range with EIO and leaves the file unchanged; others pass', async () => {
    const { v, path } = faulty({ rules: [{ op: 'write', errno: 'EIO', offset: MiB, length: 64 * KiB }] });
    const err = await writeAt(v, MiB + 60 * KiB, 8 * KiB); // straddles the range's end
    expect(err).toMatchObject({ code: 'EIO', errno: -os.constants.errno.EIO, syscall: 'write', message: 'injected EIO (fault rules[0])' });
    expect(readFileSync(path).subarray(MiB - 4 * KiB, MiB + 72 * KiB).every((b) => b === 0)).toBe(true);
    // Touching the range's edges from outside is not overlapping it.
    expect(await writeAt(v, MiB - 4 * KiB)).toBeNull();
    expect(await writeAt(v, MiB + 64 * KiB)).toBeNull();
    const disk = readFileSync(path);
    expect(disk.subarray(MiB - 4 * KiB, MiB).every((b) => b === 0x55)).toBe(true);
    expect(disk.subarray(MiB + 64 * KiB, MiB + 68 * KiB).every((b) => b === 0x55)).toBe(true);
    expect(v.injected).toBe(1);
  });

  it('lets the first `after` matching requests through, then fails `count` of them, then none', async () => {
    const { v } = faulty({ rules: [{ op: 'write', errno: 'EIO', after: 2, count: 3 }] });
    const codes: Array<string | undefined> = [];
    for (let i = 0; i < 7; i++) codes.push((await writeAt(v, i * 4 * KiB))?.code);
    expect(codes).toEqual([undefined, undefined, 'EIO', 'EIO', 'EIO', undefined, undefined]);
    expect(v.injected).toBe(3);
  });

  it('with `rate`, fails the same requests for the same seed, about that share of them', async () => {
    const failures = async (seed: number): Promise<boolean[]> => {
      const { v } = faulty({ seed, rules: [{ op: 'write', errno: 'EIO', rate: 0.5 }] }, 'sync');
      const failed: boolean[] = [];
      for (let i = 0; i < 1000; i++) failed.push((await writeAt(v, (i % 1024) * 4 * KiB, 512)) !== null);
      return failed;
    };
    const first = await failures(7);
    expect(await failures(7)).toEqual(first);
    expect(await failures(8)).not.toEqual(first);
    const n = first.filter(Boolean).length;
    expect(n).toBeGreaterThan(300);
    expect(n).toBeLessThan(700);
    // The generator is seeded, so this is exact: a change to it shows here.
    expect(n).toBe(460);
  });

  it('fails with the errno asked for: ENOSPC, EROFS', async () => {
    const { v } = faulty({ rules: [{ op: 'write', errno: 'ENOSPC', count: 1 }, { op: 'zero', errno: 'EROFS' }] });
    expect(await writeAt(v, 0)).toMatchObject({ code: 'ENOSPC', errno: -os.constants.errno.ENOSPC });
    const zeroErr = await outcome((d) => v.zero(0, 4 * KiB, { noHole: false, fastZero: false, fua: false }, d));
    expect(zeroErr).toMatchObject({ code: 'EROFS', errno: -os.constants.errno.EROFS, message: 'injected EROFS (fault rules[1])' });
  });

  it('any-write covers write, trim, zero and flush; reads pass; a ranged rule never matches a flush', async () => {
    const { v } = faulty({ rules: [{ op: 'any-write', errno: 'EIO' }] });
    expect((await writeAt(v, 0))?.code).toBe('EIO');
    expect((await outcome((d) => v.trim(0, 4 * KiB, false, d)))?.code).toBe('EIO');
    expect((await outcome((d) => v.zero(0, 4 * KiB, { noHole: true, fastZero: false, fua: false }, d)))?.code).toBe('EIO');
    expect((await outcome((d) => v.flush(d)))?.code).toBe('EIO');
    expect(await outcome((d) => v.read(Buffer.alloc(4 * KiB), 0, d))).toBeNull();
    v.setRules({ rules: [{ op: 'any-write', errno: 'EIO', offset: 0, length: MiB }] });
    expect(await outcome((d) => v.flush(d))).toBeNull();
    expect((await outcome((d) => v.trim(0, 4 * KiB, false, d)))?.code).toBe('EIO');
  });

  it('fails reads in the range and gives no zero-copy view there while the rule is live', async () => {
    const { v } = faulty({ rules: [{ op: 'read', errno: 'EIO', offset: 2 * MiB, count: 1 }] }, 'mmap');
    expect(v.view(0, 4 * KiB)).toBeInstanceOf(Buffer);
    expect(v.view(2 * MiB, 4 * KiB)).toBeUndefined();
    expect((await outcome((d) => v.read(Buffer.alloc(4 * KiB), 2 * MiB, d)))?.code).toBe('EIO');
    // Spent: the range reads (and views) normally again.
    expect(await outcome((d) => v.read(Buffer.alloc(4 * KiB), 2 * MiB, d))).toBeNull();
    expect(v.view(2 * MiB, 4 * KiB)).toBeInstanceOf(Buffer);
  });

  it('setRules replaces the rules and starts their counts afresh', async () => {
    const { v } = faulty({ rules: [{ op: 'write', errno: 'EIO', count: 1 }] });
    expect((await writeAt(v, 0))?.code).toBe('EIO');
    expect(await writeAt(v, 0)).toBeNull();
    v.setRules({ rules: [{ op: 'write', errno: 'ENOSPC', count: 1 }] });
    expect((await writeAt(v, 0))?.code).toBe('ENOSPC');
    v.setRules({ rules: [] });
    expect(await writeAt(v, 0)).toBeNull();
    expect(() => v.setRules({ rules: [{ op: 'write', errno: 'EWHAT' }] })).toThrow(/"EWHAT" is not an errno name/);
    expect(await writeAt(v, 0)).toBeNull(); // the refused rules did not replace the old ones
  });

  // libuv compares timers against a loop clock cached at the start of the tick, so a timer
  // may fire up to a millisecond before performance.now() says it is due.
  const SLACK_MS = 2;

  it('delayMs alone slows the request down and then lets it through', async () => {
    const { v, path } = faulty({ rules: [{ op: 'write', delayMs: 150 }] });
    const start = performance.now();
    expect(await writeAt(v, 0, 4 * KiB, 0x77)).toBeNull();
    expect(performance.now() - start).toBeGreaterThanOrEqual(150 - SLACK_MS);
    expect(readFileSync(path).subarray(0, 4 * KiB).every((b) => b === 0x77)).toBe(true);
    expect(v.injected).toBe(1);
  });

  it('delayMs with errno waits, then fails without writing', async () => {
    const { v, path } = faulty({ rules: [{ op: 'write', errno: 'EIO', delayMs: 100 }] });
    const start = performance.now();
    expect((await writeAt(v, 0))?.code).toBe('EIO');
    expect(performance.now() - start).toBeGreaterThanOrEqual(100 - SLACK_MS);
    expect(readFileSync(path).subarray(0, 4 * KiB).every((b) => b === 0)).toBe(true);
  });
});

describe('fault spec', () => {
  it('reads one rule set for every volume, with sizes as numbers or with units', () => {
    const plan = parseFaultSpec(JSON.stringify({ seed: 1, rules: [{ op: 'write', errno: 'EIO', offset: '1M', length: 65536, count: 3 }] }));
    expect(rulesFor(plan, 'anything')).toEqual({ seed: 1, rules: [{ op: 'write', errno: 'EIO', offset: MiB, length: 64 * KiB, count: 3 }] });
  });

  it('reads rule sets by volume, "*" for the others', () => {
    const plan = parseFaultSpec(JSON.stringify({ volumes: { vol0: { rules: [{ op: 'flush', delayMs: 50 }] }, '*': { seed: 3, rules: [] } } }));
    expect(rulesFor(plan, 'vol0')).toEqual({ seed: 0, rules: [{ op: 'flush', delayMs: 50 }] });
    expect(rulesFor(plan, 'vol1')).toEqual({ seed: 3, rules: [] });
    expect(rulesFor(parseFaultSpec('{"volumes": {"vol0": {"rules": []}}}'), 'vol1')).toEqual({ rules: [] });
  });

  it('refuses a bad spec, naming each problem and its field', () => {
    const refusal = (spec: unknown) => {
      try {
        parseFaultSpec(typeof spec === 'string' ? spec : JSON.stringify(spec), 'faults.json');
      } catch (err) {
        return (err as Error).message;
      }
      throw new Error('the spec was accepted');
    };
    expect(refusal('{"rules": [')).toMatch(/^faults\.json is not valid JSON: /);
    const msg = refusal({ rules: [{ op: 'write', errno: 'EBOGUS' }, { op: 'wirte', errno: 'EIO' }, { op: 'read', errno: 'EIO', offset: -1, lenght: 4096 }] });
    expect(msg).toMatch(/^faults\.json is not a valid fault spec:\n/);
    expect(msg).toMatch(/rules\.0\.errno: "EBOGUS" is not an errno name of this system \(examples: EIO, ENOSPC, EROFS\)/);
    expect(msg).toMatch(/rules\.1\.op: /);
    expect(msg).toMatch(/rules\.2\.offset: -1 is not a whole number of bytes of at least 0/);
    expect(msg).toMatch(/rules\.2: Unrecognized key: "lenght"/);
    expect(refusal({ rules: [{ op: 'write' }] })).toMatch(/rules\.0: give errno \(to fail\), delayMs \(to slow down\), or both/);
    expect(refusal({ rules: [{ op: 'flush', errno: 'EIO', length: 4096 }] })).toMatch(/rules\.0\.offset: a flush has no range/);
    expect(refusal({ rules: [{ op: 'write', errno: 'EIO', rate: 2, length: '1X' }] })).toMatch(/rules\.0\.length: "1X" is not a size[\s\S]*rules\.0\.rate: /);
    expect(refusal({ volumes: { vol0: { rules: [{ op: 'write', errno: 'EIO', count: 0 }] } } })).toMatch(/volumes\.vol0\.rules\.0\.count: /);
  });
});
