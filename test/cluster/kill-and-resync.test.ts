// Two real node processes on loopback: a write on one reads back on the other; node b is killed
// (kill -9) while a goes on writing; b restarts, resyncs by itself (only what changed) and both
// replicas end byte-identical.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { until, volumeStatus as status } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { freePort, startClusterNode, type RunningServer } from '../support/processes.js';

const MiB = 2 ** 20;

describe('two-node cluster: kill -9 and automatic resync', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-cluster-'));
  const running: RunningServer[] = [];
  afterAll(async () => {
    for (const r of running) await r.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('mirrors writes, survives a killed node, and resyncs only the changes when it returns', async () => {
    const ports = await Promise.all(Array.from({ length: 6 }, () => freePort()));
    const [nbdA, nbdB, peerA, peerB, adminA, adminB] = ports as [number, number, number, number, number, number];
    const config = join(dir, 'cluster.json');
    writeFileSync(
      config,
      JSON.stringify({
        nodes: {
          a: { nbd: `127.0.0.1:${nbdA}`, peer: `127.0.0.1:${peerA}`, admin: `127.0.0.1:${adminA}`, dataDir: 'a' },
          b: { nbd: `127.0.0.1:${nbdB}`, peer: `127.0.0.1:${peerB}`, admin: `127.0.0.1:${adminB}`, dataDir: 'b' },
        },
        volumes: { vol0: { size: '64M' } },
      }),
    );
    const a = await startClusterNode(config, 'a');
    let b = await startClusterNode(config, 'b');
    running.push(a, b);
    await until(async () => (await status(adminA)).connection === 'Connected' && (await status(adminB)).disk === 'UpToDate');

    // Cross-node read-after-write.
    const ca = await NbdClient.connect({ port: nbdA, exportName: 'vol0' });
    await ca.write(0, Buffer.alloc(MiB, 0x11));
    // Flushed, so durable on b too: a power cut of b could not take it, and it is not resynced.
    await ca.flush();
    const cb = await NbdClient.connect({ port: nbdB, exportName: 'vol0' });
    expect((await cb.read(0, MiB)).every((x) => x === 0x11)).toBe(true);
    cb.close();

    // b dies without warning; a notices and goes on alone.
    await b.stop('SIGKILL');
    await until(async () => (await status(adminA)).connection !== 'Connected');
    await ca.write(8 * MiB, Buffer.alloc(2 * MiB, 0x22));
    await ca.write(40 * MiB, Buffer.alloc(4096, 0x33));
    await ca.flush();
    const dirty = (await status(adminA)).outOfSyncBytes;
    expect(dirty).toBe(2 * MiB + 4096);

    // b returns: automatic resync, then both UpToDate with nothing out of sync.
    b = await startClusterNode(config, 'b');
    running.push(b);
    await until(async () => {
      const [sa, sb] = [await status(adminA), await status(adminB)];
      return sa.connection === 'Connected' && sb.disk === 'UpToDate' && sa.outOfSyncBytes === 0 && sb.outOfSyncBytes === 0 && sb.resync === null;
    });
    const sb = await status(adminB);
    expect(sb.resyncedBytesTotal).toBe(dirty); // the changes, not the 64 MiB volume
    await ca.flush();
    ca.close();
    expect(readFileSync(join(dir, 'a', 'vol0.img')).equals(readFileSync(join(dir, 'b', 'vol0.img')))).toBe(true);
  });
});
