// qemu's NBD client: pattern writes and reads, FUA, write-zeroes, discard and async I/O.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, serveExport, type Fixture, type ServeMode } from '../support/fixture.js';
import { missingTools } from '../support/tools.js';

describe.skipIf(missingTools('qemu-io', 'qemu-img').length > 0).each<ServeMode>(['standalone', 'mirrored'])('qemu-io (%s)', (mode) => {
  let f: Fixture;
  beforeAll(async () => {
    f = await serveExport(mode, { size: '64M' });
  });
  afterAll(() => f?.cleanup());

  const io = (...cmds: string[]) => run('qemu-io', ['-f', 'raw', f.uri, ...cmds.flatMap((c) => ['-c', c])]);

  it('writes patterns (plain, FUA, zero, discard) and reads them back', async () => {
    await io('write -P 0xa1 0 1M', 'write -f -P 0xb2 1M 64k', 'write -P 0xc3 4M 2M', 'write -z 4M 512k', 'discard 5M 512k');
    const out = await io('read -P 0xa1 0 1M', 'read -P 0xb2 1M 64k', 'read -P 0 4M 512k', 'read -P 0xc3 4608k 512k', 'read -P 0 5M 512k', 'read -P 0xc3 5632k 512k');
    expect(out).not.toMatch(/Pattern verification failed|error/i);
    expect(out.match(/^read /gm)).toHaveLength(6);
  });

  it('detects a wrong pattern (the check can fail)', async () => {
    await io('write -P 0x11 8M 4k');
    const out = await io('read -P 0x22 8M 4k').catch((e: Error) => e.message);
    expect(out).toMatch(/Pattern verification failed/);
  });

  it('runs pipelined async writes and reads with a flush', async () => {
    const writes = Array.from({ length: 16 }, (_, i) => `aio_write -P ${0x30 + i} ${16 + i}M 1M`);
    await io(...writes, 'aio_flush');
    const reads = Array.from({ length: 16 }, (_, i) => `aio_read -P ${0x30 + i} ${16 + i}M 1M`);
    const out = await io(...reads, 'aio_flush');
    expect(out).not.toMatch(/Pattern verification failed|error/i);
    expect(out.match(/^read /gm)).toHaveLength(16);
  });

  it('qemu-img map sees written data and holes', async () => {
    const map = JSON.parse(await run('qemu-img', ['map', '--output=json', '-f', 'raw', f.uri])) as Array<{ start: number; length: number; data: boolean }>;
    expect(map.some((x) => x.data && x.start === 0)).toBe(true);
    expect(map.some((x) => !x.data)).toBe(true);
  });
});
