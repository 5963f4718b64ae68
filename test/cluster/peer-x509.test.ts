// Mutual x509 with real processes and real clients: `nbd-mirror keygen --ca` makes a CA and a
// certificate per node; one folder per node serves its peer link (security.peerCertificates)
// and its NBD TLS (nodes.N.tls.certificates). The pair links and mirrors; qemu-io and nbdinfo
// attach over TLS checking the nodes against the CA. Then nodes that must not link knock while
// the pair serves: one of another cluster (another keygen's CA), one with only the cluster
// secret (TLS-PSK), a plain one — each refused with one line saying why, the live link and the
// data untouched. A node whose certificate names another node, or is missing, does not start.
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dataFile, pairPorts, until, volumeStatus as status, writePairConfig, type PairPorts } from '../support/cluster.js';
import { run } from '../support/fixture.js';
import { cliPath, startClusterNode, type RunningServer } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

const MiB = 2 ** 20;
const SIZE = 64 * MiB;
const TIMEOUT = 1000;
const TLS_FAILED = 'peer-link TLS handshake failed';
const logged = (r: RunningServer, msg: string) => r.logs.filter((l) => l.msg === msg);
const reasons = (r: RunningServer, msg: string) => logged(r, msg).map((l) => String(l.reason ?? l.hint));
const keygen = (...args: string[]) => run(process.execPath, [cliPath, 'keygen', ...args]);
const missing = missingTools('qemu-io', 'nbdinfo');

describe.skipIf(missing.length > 0)('mutual x509 on the peer link (keygen --ca), real processes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-x509-'));
  const running: RunningServer[] = [];
  let p: PairPorts;
  let a: RunningServer;
  let b: RunningServer;
  /** The cluster's config (next to its keys: keys/ca, keys/certs/NODE). */
  let config: string;
  const link = { link: { timeout: TIMEOUT } };
  /** Per node: NBD over TLS (require) with the node's keygen folder, as the peer link uses it. */
  const nbdTls = (certs: string) => ({ nodeA: { tls: { mode: 'require', certificates: `${certs}/a` } }, nodeB: { tls: { mode: 'require', certificates: `${certs}/b` } } });

  beforeAll(async () => {
    p = await pairPorts();
    config = writePairConfig(join(dir, 'cluster.json'), p, '64M', p.peerB, { ...link, security: { peerCertificates: 'keys/certs' }, ...nbdTls('keys/certs') });
    await keygen('--dir', join(dir, 'keys'), '--ca', '--config', config);
    a = await startClusterNode(config, 'a');
    b = await startClusterNode(config, 'b');
    running.push(a, b);
    await until(async () => (await status(p.adminA)).connection === 'Connected' && (await status(p.adminB)).disk === 'UpToDate');
  });
  afterAll(async () => {
    for (const r of running) await r.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  /** qemu-io through node `port` over TLS, checking the node's certificate with the cluster CA. */
  const qemuIo = (port: number, ...commands: string[]) =>
    run('qemu-io', ['--object', `tls-creds-x509,id=tls0,dir=${join(dir, 'keys', 'ca')},endpoint=client`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=vol0,tls-creds=tls0`, ...commands.flatMap((c) => ['-c', c])]);

  it('links over mutual x509, mirrors writes, and serves NBD TLS with the same certificates to qemu-io and nbdinfo', async () => {
    expect(logged(a, 'the peer link is authenticated and encrypted')[0]!.auth).toMatch(/mutual x509/);
    expect(logged(a, 'peer link connected')).toHaveLength(1);
    // Written through a (qemu-io over TLS), read back through b (qemu-io, then nbdinfo, over TLS).
    expect(await qemuIo(p.nbdA, 'write -P 0x5c 1M 2M', 'flush')).toContain('wrote 2097152/2097152 bytes');
    expect(await qemuIo(p.nbdB, 'read -P 0x5c 1M 2M')).toContain('read 2097152/2097152 bytes');
    const info = JSON.parse(await run('nbdinfo', ['--json', `nbds://127.0.0.1:${p.nbdB}/vol0?tls-certificates=${join(dir, 'keys', 'ca')}`]));
    expect(info.TLS).toBe(true);
    expect(info.exports[0]['export-size']).toBe(SIZE);
    // Plain NBD is refused (require), and both copies hold the bytes.
    await expect(run('nbdinfo', [`nbd://127.0.0.1:${p.nbdA}/vol0`])).rejects.toThrow(/nbdinfo/);
    await until(async () => (await status(p.adminA)).outOfSyncBytes === 0 && (await status(p.adminB)).outOfSyncBytes === 0);
    const [fa, fb] = [readFileSync(dataFile(dir, 'a')), readFileSync(dataFile(dir, 'b'))];
    expect(fa.subarray(MiB, 3 * MiB).equals(Buffer.alloc(2 * MiB, 0x5c))).toBe(true);
    expect(fa.equals(fb)).toBe(true);
  });

  it('a node of another cluster (another CA), one with only the cluster secret, and a plain one are refused, each with one line; the link and the data stay', async () => {
    const bData = readFileSync(dataFile(dir, 'b'));
    const cases = [
      // Another keygen: its own CA, and a certificate for "a" from it. The impostor refuses b's
      // certificate first and hangs up: b hears a hang-up.
      { what: 'another-ca', keys: ['--ca', '--config', config], security: { peerCertificates: 'keys/certs' }, impostorSays: [TLS_FAILED, /not signed by this cluster's CA/], bSays: /hung up .*refused this node's certificate/ },
      // b hears the same hang-up as from the last one (its line for that is not repeated within a minute).
      { what: 'psk', keys: [], security: { clusterSecret: 'keys/cluster.secret' }, impostorSays: [TLS_FAILED, /a certificate instead of the pre-shared key/], bSays: undefined },
      { what: 'plain', keys: undefined, security: undefined, impostorSays: ['the peer closed the connection before answering HELLO', /require TLS/], bSays: /not TLS/ },
    ] as const;
    for (const c of cases) {
      // The impostor: node a's name, its own ports and data, b's peer address.
      const sub = join(dir, `impostor-${c.what}`);
      mkdirSync(sub);
      if (c.keys) await keygen('--dir', join(sub, 'keys'), ...c.keys);
      const own = await pairPorts();
      const cfg = writePairConfig(join(sub, 'cluster.json'), { ...p, nbdA: own.nbdA, peerA: own.peerA, adminA: own.adminA }, '64M', p.peerB, { ...link, ...(c.security && { security: c.security }) });
      const failedBefore = reasons(b, TLS_FAILED).length;
      const node = await startClusterNode(cfg, 'a');
      running.push(node);
      await until(() => (c.bSays === undefined || reasons(b, TLS_FAILED).length > failedBefore) && logged(node, c.impostorSays[0]).length > 0, 10_000);
      expect(reasons(node, c.impostorSays[0]), c.what).toEqual([expect.stringMatching(c.impostorSays[1])]);
      if (c.bSays) expect(reasons(b, TLS_FAILED).slice(failedBefore), c.what).toEqual([expect.stringMatching(c.bSays)]);
      expect(logged(node, 'peer link connected'), c.what).toHaveLength(0);
      await node.stop();
      // Its own copy was never written by b: still all zeros.
      expect(readFileSync(dataFile(sub, 'a')).equals(Buffer.alloc(SIZE)), c.what).toBe(true);
    }
    // The live link never dropped; writes go on through it; the pair is in sync and identical.
    expect(await qemuIo(p.nbdA, 'write -P 0x3d 8M 1M', 'flush')).toContain('wrote 1048576/1048576 bytes');
    for (const node of [a, b]) expect(logged(node, 'peer link lost')).toHaveLength(0);
    expect((await status(p.adminB)).connection).toBe('Connected');
    await until(async () => (await status(p.adminA)).outOfSyncBytes === 0 && (await status(p.adminB)).outOfSyncBytes === 0);
    const after = readFileSync(dataFile(dir, 'b'));
    expect(after.subarray(8 * MiB, 9 * MiB).equals(Buffer.alloc(MiB, 0x3d))).toBe(true);
    // Nothing else on b changed.
    expect(Buffer.concat([after.subarray(0, 8 * MiB), after.subarray(9 * MiB)]).equals(Buffer.concat([bData.subarray(0, 8 * MiB), bData.subarray(9 * MiB)]))).toBe(true);
    expect(readFileSync(dataFile(dir, 'a')).equals(after)).toBe(true);
  });

  it('a node whose certificate names another node, or is missing, does not start, and says which file', async () => {
    const sub = join(dir, 'misnamed');
    cpSync(join(dir, 'keys', 'certs'), join(sub, 'certs'), { recursive: true });
    // a's folder with b's certificate and key.
    for (const f of ['server-cert.pem', 'server-key.pem']) copyFileSync(join(sub, 'certs', 'b', f), join(sub, 'certs', 'a', f));
    const own = await pairPorts();
    const cfg = writePairConfig(join(sub, 'cluster.json'), own, '64M', own.peerB, { security: { peerCertificates: 'certs' } });
    const serve = () => run(process.execPath, [cliPath, 'serve', '--config', cfg, '--node', 'a'], { timeoutMs: 20_000 });
    await expect(serve()).rejects.toThrow(/certs\/a\/server-cert\.pem is for CN=b .*not this node "a"/);
    rmSync(join(sub, 'certs', 'a', 'server-key.pem'));
    await expect(serve()).rejects.toThrow(/cannot read the peer-link certificate file .*certs\/a\/server-key\.pem/);
  });
});
