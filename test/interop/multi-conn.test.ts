// Multi-conn: a write acknowledged on one connection, flushed on another, reads back on a third;
// replies to pipelined requests come back as each completes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CmdFlag } from '../../src/protocol/constants.js';
import { NbdClient } from '../support/nbd-client.js';
import { serveTempExport, type Fixture } from '../support/fixture.js';

describe('multi-conn and pipelining (our client)', () => {
  let f: Fixture;
  beforeAll(async () => {
    f = await serveTempExport({ size: '64M' });
  });
  afterAll(() => f?.cleanup());

  it('flush on connection 2 covers a write acknowledged on connection 1; connection 3 sees it', async () => {
    const [a, b, c] = await Promise.all([1, 2, 3].map(() => NbdClient.connect({ port: f.server.port, exportName: 'disk' })));
    const data = Buffer.alloc(128 << 10, 0x5a);
    await a!.write(4 << 20, data);
    await b!.flush();
    expect((await c!.read(4 << 20, data.length)).equals(data)).toBe(true);
    await Promise.all([a!, b!, c!].map((x) => x.disconnect()));
  });

  it('answers 64 pipelined mixed requests, each with its own cookie', async () => {
    const c = await NbdClient.connect({ port: f.server.port, exportName: 'disk' });
    const ops: Array<Promise<unknown>> = [];
    for (let i = 0; i < 32; i++) ops.push(c.write(i * 65536, Buffer.alloc(65536, i), i % 4 === 0 ? CmdFlag.FUA : 0));
    ops.push(c.flush());
    await Promise.all(ops);
    // Reads only after the writes are acknowledged: NBD does not order requests in flight together.
    const got = await Promise.all(Array.from({ length: 32 }, (_, i) => c.read(i * 65536, 65536)));
    got.forEach((buf, i) => expect(buf.every((x) => x === i)).toBe(true));
    await c.disconnect();
  });

  it('holes in large reads come back as zeroes; block status agrees', async () => {
    const c = await NbdClient.connect({ port: f.server.port, exportName: 'disk' });
    await c.write(32 << 20, Buffer.alloc(4096, 7));
    const buf = await c.read((32 << 20) - (1 << 20), 2 << 20);
    expect(buf.subarray(1 << 20, (1 << 20) + 4096).every((x) => x === 7)).toBe(true);
    expect(buf.subarray(0, 1 << 20).every((x) => x === 0)).toBe(true);
    const ext = await c.blockStatus((32 << 20) - (1 << 20), 2 << 20);
    expect(ext[0]).toEqual({ length: 1 << 20, flags: 3 });
    expect(ext[1]!.flags).toBe(0);
    await c.disconnect();
  });
});
