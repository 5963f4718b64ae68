// Peer-link integrity with real node processes: a proxy between a and b flips a bit in data
// frames. A damaged WRITE is caught by its digest, sent again and lands intact; damage that
// keeps coming resets the link, and once it stops the nodes reconnect, resync and match.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dataFile, pairPorts, until, volumeStatus as status, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { startClusterNode, type RunningServer } from '../support/processes.js';
import { TcpProxy } from '../support/tcp-proxy.js';

const MiB = 2 ** 20;

describe('peer link integrity (digest on every data frame)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-integrity-'));
  const running: RunningServer[] = [];
  let proxy: TcpProxy | undefined;
  afterAll(async () => {
    for (const r of running) await r.stop('SIGKILL');
    await proxy?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a damaged write is caught and sent again; persistent damage resets the link; replicas end identical', async () => {
    const p = await pairPorts();
    proxy = new TcpProxy({ host: '127.0.0.1', port: p.peerB });
    await proxy.start();
    // a dials b (its name sorts first) through the proxy, so a's WRITE frames cross it.
    writePairConfig(join(dir, 'a.json'), p, '16M', proxy.port);
    writePairConfig(join(dir, 'b.json'), p, '16M');
    for (const node of ['a', 'b'] as const) running.push(await startClusterNode(join(dir, `${node}.json`), node));
    await until(async () => (await status(p.adminA)).connection === 'Connected' && (await status(p.adminB)).disk === 'UpToDate');
    const a = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    const b = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });

    // Two damaged frames: each is refused by b and sent again by a; the link stays up.
    proxy.damageFrames = 2;
    const data = Buffer.alloc(64 * 1024, 0x3c);
    await a.write(0, data);
    await a.write(MiB, Buffer.alloc(4096, 0x7e));
    expect(proxy.damagedFrames).toBe(2);
    expect((await b.read(0, data.length)).equals(data)).toBe(true);
    expect((await b.read(MiB, 4096)).equals(Buffer.alloc(4096, 0x7e))).toBe(true);
    const sb = await status(p.adminB);
    expect(sb.integrityErrors).toBe(2);
    expect(sb.connection).toBe('Connected');
    expect((await status(p.adminA)).outOfSyncBytes).toBe(0);

    // Damage on every frame: b gives up after 3 tries of one frame and resets the link; a's
    // write still completes (as a degraded write, its bits set).
    proxy.damageFrames = Infinity;
    await a.write(2 * MiB, Buffer.alloc(8192, 0x11));
    expect((await status(p.adminA)).outOfSyncBytes).toBeGreaterThanOrEqual(8192);
    expect((await status(p.adminB)).integrityErrors).toBeGreaterThanOrEqual(5);
    proxy.damageFrames = 0;
    await until(async () => {
      const [sa, sbb] = [await status(p.adminA), await status(p.adminB)];
      return sa.connection === 'Connected' && sa.outOfSyncBytes === 0 && sbb.disk === 'UpToDate' && sbb.resync === null;
    });
    await a.flush();
    await b.flush();
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
    a.close();
    b.close();
  });
});
