// A full sync of a mostly empty thin volume, two real node processes with a recording proxy on
// the peer link: node b joins brand new while node a holds a few MiB scattered over 32 GiB.
// The resync walks a's holes (RS_HOLES, a GiB at a time) and pulls only its data, so what
// crosses the link is the allocated data and a few KiB of frames — not one request per MiB of
// virtual size (32,768 of them before: 3.8 MB of frames, 6.9 s instead of 0.4). Then b leaves, a discards a range
// b holds and writes another, and b returns: the bitmap resync zeroes b's copy of the discarded
// range (a hole on the source, data on the target) and frees its units. Both copies read the
// same through qemu-io and nbdinfo, allocate the same units, and `pool check` finds no problem.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fetchStatus } from '../../src/admin/admin-client.js';
import { run } from '../support/fixture.js';
import { pairPorts, until, writePairConfig } from '../support/cluster.js';
import { cliPath, startClusterNode, type RunningServer } from '../support/processes.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import { missingTools } from '../support/tools.js';

const MiB = 1 << 20;
const GiB = 1 << 30;
const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-thin-full-sync-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const qemuIo = (uri: string, ...cmds: string[]) => run('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])]);
const volume = async (port: number) => (await fetchStatus({ host: '127.0.0.1', port })).volumes.vol0!;
const cli = (args: string[]) => run(process.execPath, [cliPath, ...args]);
/** Bytes that crossed the link both ways since recording started. */
const linkBytes = (proxy: TcpProxy) => proxy.recordings.reduce((n, r) => n + [...r.toUpstream, ...r.toClient].reduce((m, b) => m + b.length, 0), 0);

describe.skipIf(missingTools('qemu-io', 'nbdinfo').length > 0)('full sync of a thin volume', () => {
  it('moves the allocated data and a few KiB of frames, not the virtual size; a hole on the source becomes a hole on the target', async () => {
    const p = await pairPorts();
    const proxy = new TcpProxy({ host: '127.0.0.1', port: p.peerB });
    const extra = { pool: { size: '64M', unit: '1M' } };
    const configB = writePairConfig(join(dir, 'cluster.json'), p, '32G', p.peerB, extra);
    const configA = writePairConfig(join(dir, 'a.json'), p, '32G', await proxy.start(), extra);
    const running: RunningServer[] = [];
    const synced = async (since: string | null) => {
      await until(async () => {
        const sb = await volume(p.adminB);
        return sb.disk === 'UpToDate' && sb.connection === 'Connected' && sb.resync === null && sb.lastResync !== null && sb.lastResync.finishedAt !== since;
      }, 90_000);
      return [await volume(p.adminA), await volume(p.adminB)] as const;
    };
    try {
      const a = await startClusterNode(configA, 'a');
      running.push(a);
      // Scattered data: a unit at the start, two at 3 GiB, 4 KiB inside a unit at 17.5 GiB, the last unit.
      await qemuIo(a.uri('vol0'), 'write -P 0x11 0 1M', 'write -P 0x22 3G 2M', `write -P 0x33 ${17 * GiB + 512 * 1024} 4k`, `write -P 0x44 ${32 * GiB - MiB} 1M`, 'flush');
      proxy.record = true;
      let b = await startClusterNode(configB, 'b');
      running.push(b);
      let [sa, sb] = await synced(null);
      expect(sa.allocatedBytes).toBe(5 * MiB);
      expect(sb.lastResync).toMatchObject({ role: 'target', bytes: 32 * GiB });
      // Only the allocated units' data was sent (the 4 KiB write's unit whole: its extent is data).
      expect(sb.lastResync!.wireBytes).toBe(sa.allocatedBytes);
      const onLink = linkBytes(proxy);
      console.log(`full sync of 32 GiB thin with ${sa.allocatedBytes / MiB} MiB allocated: ${onLink} bytes on the link, ${sb.lastResync!.seconds.toFixed(2)} s`);
      expect(onLink).toBeGreaterThan(5 * MiB);
      expect(onLink).toBeLessThan(5 * MiB + 64 * 1024);
      expect(sb.allocatedBytes).toBe(sa.allocatedBytes);
      await qemuIo(b.uri('vol0'), 'read -P 0x11 0 1M', 'read -P 0x22 3G 2M', `read -P 0x33 ${17 * GiB + 512 * 1024} 4k`, `read -P 0 ${17 * GiB} 512k`, `read -P 0x44 ${32 * GiB - MiB} 1M`, 'read -P 0 1M 2M', 'read -P 0 20G 1M');
      const map = (uri: string) => run('nbdinfo', ['--map', uri]);
      expect(await map(b.uri('vol0'))).toBe(await map(a.uri('vol0')));

      // b leaves; a discards the 2 MiB b holds at 3 GiB and writes 1 MiB at 9 GiB; b returns.
      const last = sb.lastResync!.finishedAt;
      await b.stop();
      await qemuIo(a.uri('vol0'), 'discard 3G 2M', 'write -P 0x55 9G 1M', 'flush');
      expect((await volume(p.adminA)).allocatedBytes).toBe(4 * MiB);
      b = await startClusterNode(configB, 'b');
      running.push(b);
      [sa, sb] = await synced(last);
      expect(sb.lastResync).toMatchObject({ role: 'target', bytes: 3 * MiB, wireBytes: MiB });
      await qemuIo(b.uri('vol0'), 'read -P 0 3G 2M', 'read -P 0x55 9G 1M', 'read -P 0x11 0 1M');
      // b's units of the discarded range were freed, not filled with zeros.
      expect(sb.allocatedBytes).toBe(4 * MiB);
      expect(await map(b.uri('vol0'))).toBe(await map(a.uri('vol0')));
      expect([sa.outOfSyncBytes, sb.outOfSyncBytes]).toEqual([0, 0]);
    } finally {
      for (const r of running) await r.stop();
      await proxy.stop();
    }
    for (const node of ['a', 'b']) {
      const report = JSON.parse(await cli(['pool', 'check', '--json', join(dir, node, 'pool.img')])) as { problems: string[] };
      expect(report.problems).toEqual([]);
    }
  }, 180_000);
});
