// fio's NBD engine: random mixed I/O, 4k–64k blocks, queue depth 32, every block verified (crc32c).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, serveTempExport, type Fixture } from '../support/fixture.js';
import { missingTools } from '../support/tools.js';

describe.skipIf(missingTools('fio').length > 0).each(['auto', 'mmap'])('fio --ioengine=nbd --verify=crc32c (--io %s)', (io) => {
  let f: Fixture;
  beforeAll(async () => {
    f = await serveTempExport({ size: '128M', extraArgs: ['--io', io] });
  });
  afterAll(() => f?.cleanup());

  it('random read/write with verification finds no error', async () => {
    const out = await run('fio', [
      '--name=verify',
      '--ioengine=nbd',
      `--uri=${f.uri}`,
      '--rw=randrw',
      '--bsrange=4k-64k',
      '--iodepth=32',
      '--size=128M',
      '--io_size=256M',
      '--verify=crc32c',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--do_verify=1',
      '--runtime=20',
      `--directory=${f.dir}`,
      '--output-format=json',
    ]);
    const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBeGreaterThan(16 << 20);
    expect(job.read.io_bytes).toBeGreaterThan(16 << 20);
  });
});
