// nbdcopy with 4 connections (multi-conn) copies a random 256 MiB image in and back out intact.
import { randomFillSync } from 'node:crypto';
import { openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, serveTempExport, type Fixture } from '../support/fixture.js';
import { missingTools } from '../support/tools.js';

describe.skipIf(missingTools('nbdcopy', 'qemu-img').length > 0)('nbdcopy', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await serveTempExport({ size: '256M' });
  });
  afterAll(() => f?.cleanup());

  it('copies 256 MiB of random data in and out with 4 connections, byte-identical', async () => {
    const src = join(f.dir, 'src.img');
    const fd = openSync(src, 'w');
    const chunk = Buffer.allocUnsafe(4 << 20);
    for (let i = 0; i < 64; i++) writeSync(fd, randomFillSync(chunk));
    closeSync(fd);
    await run('nbdcopy', ['--connections=4', src, f.uri]);
    const back = join(f.dir, 'back.img');
    await run('nbdcopy', ['--connections=4', f.uri, back]);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, back]);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, f.uri]);
    // the comparison can fail: flip one byte of the source and it must notice
    const fd2 = openSync(src, 'r+');
    writeSync(fd2, Buffer.from([chunk[0]! ^ 0xff]), 0, 1, 12345);
    closeSync(fd2);
    await expect(run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, back])).rejects.toThrow(/differ|mismatch|Content/i);
  });
});
