// SIGTERM with requests in flight: they are answered, data is flushed, the process exits 0, and
// requests that arrive after the stop began get ESHUTDOWN.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CmdFlag } from '../../src/protocol/constants.js';
import { NbdClient } from '../support/nbd-client.js';
import { serveTempExport, type Fixture } from '../support/fixture.js';

describe('graceful shutdown', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await serveTempExport({ size: '64M' });
  });
  afterAll(() => f?.cleanup());

  it('answers requests in flight, flushes, exits 0', async () => {
    const c = await NbdClient.connect({ port: f.server.port, exportName: 'disk' });
    const writes = Array.from({ length: 64 }, (_, i) => c.write(i << 20, Buffer.alloc(1 << 20, i + 1), i % 8 === 0 ? CmdFlag.FUA : 0));
    // SIGTERM once the first writes are acknowledged, while the rest are still in flight.
    await writes[0];
    const exit = f.server.stop('SIGTERM');
    const results = await Promise.allSettled(writes);
    const ok = results.filter((r) => r.status === 'fulfilled').length;
    const refused = results.filter((r) => r.status === 'rejected');
    // Not acknowledged: refused with ESHUTDOWN, or cut off when the server closed the socket.
    for (const r of refused) expect(String((r as PromiseRejectedResult).reason)).toMatch(/ESHUTDOWN|closed|ECONNRESET|EPIPE/);
    expect(ok).toBeGreaterThan(0);
    expect(await exit).toBe(0);
    // Every acknowledged write is in the file.
    const file = readFileSync(f.file);
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') expect(file.subarray(i << 20, (i + 1) << 20).every((x) => x === i + 1)).toBe(true);
    });
    const logs = f.server.logs.map((l) => l.msg);
    expect(logs).toContain('shutting down');
    expect(logs).toContain('shut down');
    c.close();
  });
});
