// Two real node processes whose peer link runs through a proxy the test cuts and heals:
// racing overlapping writes on both nodes end identical; a cut link heals without a node dying
// and the changes made meanwhile are resynced.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { until, volumeStatus as status } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { freePort, startClusterNode, type RunningServer } from '../support/processes.js';
import { TcpProxy } from '../support/tcp-proxy.js';

const MiB = 2 ** 20;

describe('two-node cluster: racing writes and a cut link', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-cluster-'));
  const running: RunningServer[] = [];
  let proxy: TcpProxy;
  afterAll(async () => {
    for (const r of running) await r.stop('SIGKILL');
    await proxy?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('overlapping writes racing on both nodes end byte-identical; a healed link resyncs', async () => {
    const [nbdA, nbdB, peerA, peerB, adminA, adminB] = (await Promise.all(Array.from({ length: 6 }, () => freePort()))) as [number, number, number, number, number, number];
    proxy = new TcpProxy({ host: '127.0.0.1', port: peerB });
    await proxy.start();
    // a (which dials, its name sorting first) reaches b through the proxy; b listens on its real port.
    const cfg = (bPeer: number) => ({
      nodes: {
        a: { nbd: `127.0.0.1:${nbdA}`, peer: `127.0.0.1:${peerA}`, admin: `127.0.0.1:${adminA}`, dataDir: 'a' },
        b: { nbd: `127.0.0.1:${nbdB}`, peer: `127.0.0.1:${bPeer}`, admin: `127.0.0.1:${adminB}`, dataDir: 'b' },
      },
      volumes: { vol0: { size: '32M' } },
    });
    writeFileSync(join(dir, 'a.json'), JSON.stringify(cfg(proxy.port)));
    writeFileSync(join(dir, 'b.json'), JSON.stringify(cfg(peerB)));
    running.push(await startClusterNode(join(dir, 'a.json'), 'a'), await startClusterNode(join(dir, 'b.json'), 'b'));
    await until(async () => (await status(adminA)).connection === 'Connected' && (await status(adminB)).disk === 'UpToDate');

    const clients = await Promise.all([nbdA, nbdA, nbdB, nbdB].map((port) => NbdClient.connect({ port, exportName: 'vol0' })));
    let seed = 99;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    // 800 writes of 512 B … 64 KiB inside one MiB, from four connections on both nodes at once.
    const writes: Array<Promise<void>> = [];
    for (let i = 0; i < 800; i++) {
      const len = 512 * (1 + rnd(128));
      const off = 512 * rnd((MiB - len) / 512);
      writes.push(clients[i % 4]!.write(off, Buffer.alloc(len, 1 + (i % 251))));
    }
    await Promise.all(writes);
    await Promise.all(clients.map((c) => c.flush()));
    const same = () => readFileSync(join(dir, 'a', 'vol0.img')).equals(readFileSync(join(dir, 'b', 'vol0.img')));
    expect(same()).toBe(true);

    // Cut the link without killing anyone; only a writes meanwhile; heal; resync.
    proxy.cut();
    await until(async () => (await status(adminA)).connection !== 'Connected' && (await status(adminB)).connection !== 'Connected');
    await clients[0]!.write(16 * MiB, Buffer.alloc(MiB, 0x5a));
    await clients[0]!.flush();
    expect((await status(adminA)).outOfSyncBytes).toBe(MiB);
    // The same facts for Prometheus, from the admin endpoint.
    const metrics = await (await fetch(`http://127.0.0.1:${adminA}/metrics`)).text();
    expect(metrics).toMatch(/^nbd_mirror_volume_out_of_sync_bytes\{volume="vol0"\} 1048576$/m);
    expect(metrics).toMatch(/^nbd_mirror_volume_connection\{volume="vol0",state="Connected"\} 0$/m);
    proxy.restore();
    await until(async () => {
      const [sa, sb] = [await status(adminA), await status(adminB)];
      return sa.connection === 'Connected' && sb.disk === 'UpToDate' && sa.outOfSyncBytes === 0 && sb.resync === null && sb.resyncedBytesTotal === MiB;
    });
    expect(same()).toBe(true);
    for (const c of clients) c.close();
  });
});
