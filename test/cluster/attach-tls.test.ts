// `nbd-mirror attach` to nodes that require NBD over TLS: with `attach.tls` (a psktool file and
// a username) its paths are encrypted and I/O goes through; without it, attach refuses to start
// and says which node needs what.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStatus, startPair, until, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { startAttachProcess, type RunningServer } from '../support/processes.js';
import { makeTlsKeys, PSK_USER } from '../support/tls.js';
import { missingTools } from '../support/tools.js';

describe.skipIf(missingTools('psktool', 'certtool').length > 0)('attach to nodes that require NBD over TLS', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-attach-tls-'));
  const keys = makeTlsKeys();
  const procs: RunningServer[] = [];
  afterAll(async () => {
    for (const p of procs) await p.stop('SIGKILL');
    keys.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  it('with attach.tls (PSK) the paths are encrypted and writes reach both nodes; without it attach refuses to start', async () => {
    const tls = { tls: { mode: 'require', psk: keys.psk } };
    const { p, a, b } = await startPair(dir, '64M', procs, { witness: false, nodeA: tls, nodeB: tls, attach: { tls: { psk: keys.psk, username: PSK_USER } } });
    const config = join(dir, 'cluster.json');
    const bare = writePairConfig(join(dir, 'bare.json'), p, '64M', p.peerB, { nodeA: tls, nodeB: tls });

    await expect(startAttachProcess(bare)).rejects.toThrow(/node a requires NBD over TLS \(nodes\.a\.tls\.mode\): give attach its credentials in attach\.tls/);

    const attach = await startAttachProcess(config);
    procs.push(attach);
    await until(async () => (await attachStatus(attach.adminPort)).active === 'a' && (await attachStatus(attach.adminPort)).paths.b!.state === 'ready');
    const client = await NbdClient.connect({ port: attach.port, exportName: 'vol0' });
    const data = Buffer.alloc(256 * 1024, 0x5a);
    await client.write(1 << 20, data);
    await client.flush();
    expect((await client.read(1 << 20, data.length)).equals(data)).toBe(true);
    await client.disconnect();
    for (const node of [a, b]) expect(node.logs.some((l) => l.msg === 'TLS started' && l.pskIdentity === PSK_USER)).toBe(true);
  });

  it('with attach.tls (X.509) it verifies the nodes against the CA and shows its client certificate', async () => {
    const tls = { tls: { mode: 'require', certificates: keys.serverCerts, verifyPeer: true } };
    const { config, a } = await startPair(mkdtempSync(join(dir, 'x509-')), '64M', procs, { witness: false, nodeA: tls, nodeB: tls, attach: { tls: { certificates: keys.clientCerts } } });
    const attach = await startAttachProcess(config);
    procs.push(attach);
    await until(async () => (await attachStatus(attach.adminPort)).active === 'a');
    const client = await NbdClient.connect({ port: attach.port, exportName: 'vol0' });
    await client.write(0, Buffer.alloc(4096, 1));
    expect((await client.read(0, 4096)).equals(Buffer.alloc(4096, 1))).toBe(true);
    await client.disconnect();
    expect(a.logs.some((l) => l.msg === 'TLS started')).toBe(true);
  });
});
