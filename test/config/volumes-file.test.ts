// The volumes file (a node's record of volumes changed online) and how it combines with the
// config at start: the file's size wins, config volumes deleted online stay deleted.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readVolumesFile, volumesAtStart, volumesFilePath, writeVolumesFile } from '../../src/config/volumes-file.js';

const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-volumes-file-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const M = 2 ** 20;
const v = (size: number) => ({ size, checksumResync: false });

describe('volumes file', () => {
  it('is absent until the first online change, then round-trips sorted, leaving no temporary file', () => {
    expect(readVolumesFile(dir)).toBeUndefined();
    writeVolumesFile(dir, { version: 1, volumes: { z: v(8 * M), a: v(4 * M) }, deleted: ['old', 'old'] });
    expect(readFileSync(volumesFilePath(dir), 'utf8')).toMatch(/"a"[\s\S]*"z"/);
    expect(readVolumesFile(dir)).toEqual({ version: 1, volumes: { a: v(4 * M), z: v(8 * M) }, deleted: ['old'] });
    expect(() => readFileSync(`${volumesFilePath(dir)}.tmp`)).toThrow(/ENOENT/);
  });

  it('records the change asked and not settled yet (optional: files without it read as before)', () => {
    const sub = mkdtempSync(join(dir, 'unfinished-'));
    const unfinished = { op: 'create' as const, name: 'vm1', size: 8 * M, force: false, generation: '0123456789abcdef' };
    writeVolumesFile(sub, { version: 1, volumes: { a: v(4 * M) }, deleted: [], unfinished });
    expect(readVolumesFile(sub)).toEqual({ version: 1, volumes: { a: v(4 * M) }, deleted: [], unfinished });
    writeVolumesFile(sub, { version: 1, volumes: { a: v(4 * M) }, deleted: [], unfinished: undefined });
    expect(readFileSync(volumesFilePath(sub), 'utf8')).not.toMatch(/unfinished/);
    expect(readVolumesFile(sub)).toEqual({ version: 1, volumes: { a: v(4 * M) }, deleted: [] });
  });

  it('refuses a damaged or foreign file rather than forget volumes', () => {
    const sub = mkdtempSync(join(dir, 'bad-'));
    writeFileSync(volumesFilePath(sub), '{"version": 1, "volumes": {');
    expect(() => readVolumesFile(sub)).toThrow(/damaged.*refusing to start/);
    for (const bad of [{ version: 2, volumes: {} }, { version: 1, volumes: { '../x': v(4096) } }, { version: 1, volumes: { a: v(4097) } }, { version: 1, volumes: { a: { size: -1 } } }, { version: 1, volumes: {}, extra: 1 },
      // An unfinished change that is no change: refused like the rest of the file.
      { version: 1, volumes: {}, unfinished: { op: 'create', name: 'x', size: 4096 } },
      { version: 1, volumes: {}, unfinished: { op: 'resize', name: '../x', size: 8192 } },
      { version: 1, volumes: {}, unfinished: { op: 'grow', name: 'x', size: 8192 } },
      { version: 1, volumes: {}, unfinished: 'delete x' },
    ]) {
      writeFileSync(volumesFilePath(sub), JSON.stringify(bad));
      expect(() => readVolumesFile(sub), JSON.stringify(bad)).toThrow(/not a volumes file/);
    }
  });

  it('combines with the config: the file adds volumes, its sizes win, its deletions hold', () => {
    const config = { keep: v(4 * M), grown: v(4 * M), gone: v(4 * M) };
    expect(volumesAtStart(config, undefined).volumes).toEqual(new Map(Object.entries(config)));
    const { volumes, notes } = volumesAtStart(config, { version: 1, volumes: { keep: v(4 * M), grown: v(16 * M), added: v(8 * M) }, deleted: ['gone'] });
    expect([...volumes]).toEqual([
      ['added', v(8 * M)],
      ['grown', v(16 * M)],
      ['keep', v(4 * M)],
    ]);
    expect(notes).toEqual([
      { volume: 'grown', note: expect.stringMatching(/resized online to 16777216: the online size is used/) },
      { volume: 'gone', note: expect.stringMatching(/deleted online.*not opened/) },
    ]);
    // A volume added to the config later (not in the file) is opened as before.
    expect(volumesAtStart({ ...config, later: v(M) }, { version: 1, volumes: {}, deleted: [] }).volumes.has('later')).toBe(true);
  });
});
