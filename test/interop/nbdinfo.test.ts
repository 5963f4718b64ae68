// nbdinfo sees what a careful NBD server advertises: exports, sizes, flags, block sizes, holes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, serveTempExport, type Fixture } from '../support/fixture.js';
import { startNbdMirror } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

describe.skipIf(missingTools('nbdinfo', 'qemu-io').length > 0)('nbdinfo', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await serveTempExport({ size: '64M' });
  });
  afterAll(() => f?.cleanup());

  it('--json reports size, block sizes, description and every capability', async () => {
    const j = JSON.parse(await run('nbdinfo', ['--json', f.uri]));
    expect(j.protocol).toBe('newstyle-fixed');
    expect(j.structured).toBe(true);
    const e = j.exports[0];
    expect(e['export-name']).toBe('disk');
    expect(e['export-size']).toBe(64 * 2 ** 20);
    expect(e.description).toBe('nbd-mirror export disk (64 MiB)');
    expect([e.block_size_minimum, e.block_size_preferred, e.block_size_maximum]).toEqual([1, 4096, 32 * 2 ** 20]);
    expect(e.contexts).toContain('base:allocation');
    for (const cap of ['can_multi_conn', 'can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_cache', 'can_df']) {
      expect(e[cap], cap).toBe(true);
    }
    expect(e.is_read_only).toBe(false);
  });

  it('--list names every export', async () => {
    const two = await startNbdMirror(['--export', `one=${f.dir}/one.img`, '--export', `two=${f.dir}/two.img`, '--size', '1M']);
    try {
      const out = await run('nbdinfo', ['--list', '--json', two.uri()]);
      expect(JSON.parse(out).exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual(['one', 'two']);
    } finally {
      await two.stop();
    }
  });

  it('--map shows data where written and holes elsewhere, and trimmed ranges as holes', async () => {
    await run('qemu-io', ['-f', 'raw', f.uri, '-c', 'write -P 0x55 1M 2M', '-c', 'write -P 0x66 8M 1M', '-c', 'discard 8M 1M']);
    const map = JSON.parse(await run('nbdinfo', ['--map', '--json', f.uri])) as Array<{ offset: number; length: number; type: number }>;
    const MiB = 2 ** 20;
    expect(map.find((x) => x.offset === 0)).toMatchObject({ length: MiB, type: 3 });
    expect(map.find((x) => x.offset === MiB)).toMatchObject({ length: 2 * MiB, type: 0 });
    expect(map.find((x) => x.offset === 3 * MiB)).toMatchObject({ type: 3 });
    expect(map.filter((x) => x.type === 0).reduce((s, x) => s + x.length, 0)).toBe(2 * MiB);
  });

  it('--read-only exports say so and drop write capabilities', async () => {
    const ro = await startNbdMirror(['--export', `disk=${f.file}`, '--read-only']);
    try {
      const e = JSON.parse(await run('nbdinfo', ['--json', ro.uri('disk')])).exports[0];
      expect(e.is_read_only).toBe(true);
      expect(e.can_trim).toBe(false);
      expect(e.can_zero).toBe(false);
    } finally {
      await ro.stop();
    }
  });
});
