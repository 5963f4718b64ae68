// `nbd-mirror verify` against two real node processes: damage b's copy behind its back, verify
// while a client keeps writing, get exactly the damaged ranges (JSON and human), see them marked
// out of sync on both nodes, then --repair --source a and find both copies identical.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dataFile, pairPorts, until, volumeStatus as status, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { runCli } from '../support/fixture.js';
import { startClusterNode, type RunningServer } from '../support/processes.js';

const MiB = 2 ** 20;

const cli = runCli;

describe('nbd-mirror verify (real processes)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-verify-'));
  const running: RunningServer[] = [];
  afterAll(async () => {
    for (const r of running) await r.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('reports exactly the damaged ranges while a client writes, marks them, and repairs them on request', async () => {
    const p = await pairPorts();
    const config = writePairConfig(join(dir, 'cluster.json'), p, '64M');
    for (const node of ['a', 'b'] as const) running.push(await startClusterNode(config, node));
    await until(async () => (await status(p.adminA)).connection === 'Connected' && (await status(p.adminB)).disk === 'UpToDate');
    const client = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    for (let off = 0; off < 64 * MiB; off += 4 * MiB) await client.write(off, Buffer.alloc(4 * MiB, 0x61));
    await client.flush();

    // b's copy damaged on its disk: 4 KiB at 10 MiB, 12 KiB at 40 MiB + 8 KiB.
    const fd = openSync(dataFile(dir, 'b'), 'r+');
    writeSync(fd, Buffer.alloc(4096, 0xd0), 0, 4096, 10 * MiB);
    writeSync(fd, Buffer.alloc(12288, 0xd0), 0, 12288, 40 * MiB + 8192);
    closeSync(fd);
    const damaged = [
      { offset: 10 * MiB, length: 4096 },
      { offset: 40 * MiB + 8192, length: 12288 },
    ];

    // A client keeps writing elsewhere (and next to the damage) during the verify.
    let writing = true;
    const writer = (async () => {
      let n = 0;
      for (; writing && n < 20_000; n++) await client.write([10 * MiB + 4096, 40 * MiB + 65536, 20 * MiB][n % 3]! + 4096 * (n % 7), Buffer.alloc(4096, n & 0xff));
      return n;
    })();
    const json = await cli(['verify', '--admin', `127.0.0.1:${p.adminA}`, '--volume', 'vol0', '--json']);
    writing = false;
    expect(await writer).toBeGreaterThan(0);
    expect(json.code, json.stderr).toBe(1);
    const result = JSON.parse(json.stdout) as { outOfSyncBytes: number; ranges: unknown[]; repaired: boolean };
    expect(result.outOfSyncBytes).toBe(16384);
    expect(result.ranges).toEqual(damaged);
    expect(result.repaired).toBe(false);
    // Marked out of sync on both nodes; nothing repaired yet.
    await until(async () => (await status(p.adminB)).outOfSyncBytes === 16384);
    expect((await status(p.adminA)).outOfSyncBytes).toBe(16384);
    expect(readFileSync(dataFile(dir, 'b')).subarray(10 * MiB, 10 * MiB + 4096).every((x) => x === 0xd0)).toBe(true);

    const human = await cli(['verify', '--admin', `127.0.0.1:${p.adminA}`, '--volume', 'vol0']);
    expect(human.code).toBe(1);
    expect(human.stdout).toMatch(/16 KiB out of sync in 2 range\(s\)/);
    expect(human.stdout).toMatch(/not repaired: run again with --repair --source NODE/);

    const bad = await cli(['verify', '--admin', `127.0.0.1:${p.adminA}`, '--volume', 'vol0', '--repair', '--source', 'c']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--source must name a node of this cluster \(a or b\)/);

    const repair = await cli(['verify', '--admin', `127.0.0.1:${p.adminA}`, '--volume', 'vol0', '--repair', '--source', 'a', '--json']);
    expect(repair.code, repair.stderr).toBe(0);
    expect(JSON.parse(repair.stdout)).toMatchObject({ outOfSyncBytes: 16384, repaired: true, repairSource: 'a' });
    await client.flush();
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
    const again = await cli(['verify', '--admin', `127.0.0.1:${p.adminB}`, '--volume', 'vol0', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ outOfSyncBytes: 0, ranges: [], node: 'b' });
    client.close();
  });
});
