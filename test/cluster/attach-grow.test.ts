// A volume grown online (`nbd-mirror volume resize`) through `nbd-mirror attach`: attach renews
// its paths to both nodes (a second connection negotiates the new size, the old one drains) and
// then offers the new size to new local clients. A client connected before keeps its size and
// keeps working through the renewal without an error or a re-sent request; a new one sees the
// new size, writes beyond the old end, and that data is on both nodes and still served after a
// kill -9 of the active node.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStatus, startPair, until } from '../support/cluster.js';
import { run } from '../support/fixture.js';
import { NbdClient } from '../support/nbd-client.js';
import { cliPath, startAttachProcess, type RunningServer } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

const MiB = 2 ** 20;

describe.skipIf(missingTools('nbdinfo', 'qemu-io').length > 0)('attach: a volume grown online', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-attach-grow-'));
  const procs: RunningServer[] = [];
  afterAll(async () => {
    for (const p of procs) await p.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('new clients see the new size and use all of it, on both nodes and after a fail-over; open clients keep theirs and never pause with an error', async () => {
    const pair = await startPair(dir, '64M', procs);
    const { p } = pair;
    const attach = await startAttachProcess(pair.config);
    procs.push(attach);
    const st = () => attachStatus(attach.adminPort);
    await until(async () => (await st()).active === 'a');
    expect((await st()).size).toBe(64 * MiB);

    // A client of before the resize: it writes and reads back without pause while the volume grows.
    const early = await NbdClient.connect({ port: attach.port, exportName: 'vol0', strict: false });
    expect(early.info.size).toBe(64 * MiB);
    let stop = false;
    let rounds = 0;
    let slowestMs = 0; // printed, not asserted (a shared machine): the renewal adds no pause of its own
    // Four writers at once (distinct blocks), so that the renewal finds requests in flight.
    const writer = async (w: number) => {
      for (let i = 0; !stop && i < 100_000; i++) {
        const block = Buffer.alloc(64 * 1024, (w * 64 + i) & 0xff);
        const at = (w * 128 + (i % 128)) * block.length;
        const t0 = performance.now();
        await early.write(at, block);
        expect((await early.read(at, block.length)).equals(block)).toBe(true);
        slowestMs = Math.max(slowestMs, performance.now() - t0);
        rounds++;
      }
    };
    const loop = Promise.all([0, 1, 2, 3].map(writer));
    await until(() => rounds > 10);

    await run(process.execPath, [cliPath, 'volume', 'resize', 'vol0', '--size', '96M', '--config', pair.config, '--node', 'a']);
    await until(async () => (await st()).size === 96 * MiB, 30_000);
    const atGrowth = rounds;
    await until(() => rounds > atGrowth + 10); // the early client carries on after the renewal
    stop = true;
    await loop;
    const s = await st();
    expect(s).toMatchObject({ mode: 'active', active: 'a', resentTotal: 0, failovers: 0, held: 0 });
    expect(Object.values(s.paths).map((x) => x.size)).toEqual([96 * MiB, 96 * MiB]);
    const renewed = attach.logs.filter((l) => l.msg === 'path renewed: new requests on the new connection, the old one drains');
    expect(renewed.map((l) => l.node).sort()).toEqual(['a', 'b']);
    console.log(`renewals: ${renewed.map((l) => `${String(l.node)} with ${String(l.retiringInFlight)} in flight on the old connection`).join(', ')}; early client rounds ${rounds}, slowest write+read ${slowestMs.toFixed(1)} ms`);
    // It keeps the size it negotiated: attach refuses beyond its old end, as a node would.
    await expect(early.read(64 * MiB, 4096)).rejects.toThrow();
    expect((await early.read(0, 4096)).length).toBe(4096);

    // A new client sees 96M and writes beyond the old end; the data reads back through attach and on both nodes.
    expect((await run('nbdinfo', ['--size', `nbd://127.0.0.1:${attach.port}/vol0`])).trim()).toBe(String(96 * MiB));
    await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${attach.port}/vol0`, '-c', 'write -P 0x5a 80M 1M', '-c', 'flush']);
    await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${attach.port}/vol0`, '-c', 'read -P 0x5a 80M 1M']);
    for (const port of [p.nbdA, p.nbdB]) await run('qemu-io', ['-f', 'raw', '-r', `nbd://127.0.0.1:${port}/vol0`, '-c', 'read -P 0x5a 80M 1M']);

    // The size shows in `status --attach`, and attach logged the change once with its reason.
    const shown = await run(process.execPath, [cliPath, 'status', '--attach', `127.0.0.1:${attach.adminPort}`]);
    expect(shown).toMatch(/vol0: active on a \(preferred a\) {2}size 96 MiB {2}paths a\* ready 96 MiB/);
    const offered = attach.logs.filter((l) => l.msg === 'volume size offered');
    expect(offered).toHaveLength(1);
    expect(offered[0]).toMatchObject({ volume: 'vol0', from: 64 * MiB, to: 96 * MiB });
    expect(offered[0]!.reason).toMatch(/grown online/);

    // kill -9 of the active node: b serves the grown range, old client and new alike.
    await pair.a.stop('SIGKILL');
    await until(async () => (await st()).active === 'b' && (await st()).mode === 'active', 30_000);
    await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${attach.port}/vol0`, '-c', 'read -P 0x5a 80M 1M', '-c', 'write -P 0x5b 95M 1M', '-c', 'read -P 0x5b 95M 1M']);
    expect((await early.read(0, 4096)).length).toBe(4096);
    await early.disconnect();
    expect((await st()).size).toBe(96 * MiB);
  }, 180_000);
});
