// `nbd-mirror keygen --dir DIR`: two fresh random keys, mode 0600, never overwritten without --force;
// with --ca --config FILE also a CA and a certificate per node (test/cluster/peer-x509.test.ts uses them);
// with --client NAME a host's client certificate (test/interop/tls.test.ts uses it with qemu-io and nbdinfo).
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { run } from '../support/fixture.js';
import { cliPath } from '../support/processes.js';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'nbd-mirror-keygen-'));
  dirs.push(d);
  return d;
};
const keygen = (dir: string, ...extra: string[]) => run(process.execPath, [cliPath, 'keygen', '--dir', dir, ...extra]);
const files = ['admin.token', 'cluster.secret'];
const contents = (dir: string) => files.map((f) => readFileSync(join(dir, f), 'utf8'));

describe('nbd-mirror keygen', () => {
  it('writes admin.token and cluster.secret: 32 random bytes as hex, mode 0600, into a folder it creates', async () => {
    const dir = join(tempDir(), 'keys');
    expect(await keygen(dir)).toMatch(/"security": \{ "adminToken": ".*admin\.token", "clusterSecret": ".*cluster\.secret" \}/);
    for (const f of files) expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
    const [token, secret] = contents(dir);
    expect(token).toMatch(/^[0-9a-f]{64}\n$/);
    expect(secret).toMatch(/^[0-9a-f]{64}\n$/);
    expect(token).not.toBe(secret);
    const other = tempDir();
    await keygen(other);
    expect(contents(other)).not.toEqual(contents(dir));
  });

  it('refuses to overwrite (and then writes nothing), replaces with --force', async () => {
    const dir = tempDir();
    await keygen(dir);
    const before = contents(dir);
    await expect(keygen(dir)).rejects.toThrow(/admin\.token and .*cluster\.secret exist: keygen does not overwrite keys .*--force/);
    expect(contents(dir)).toEqual(before);
    // One of the two there already: the missing one is not written either.
    const half = tempDir();
    writeFileSync(join(half, 'cluster.secret'), 'kept\n', { mode: 0o600 });
    await expect(keygen(half)).rejects.toThrow(/cluster\.secret exists/);
    expect(() => statSync(join(half, 'admin.token'))).toThrow(/ENOENT/);
    expect(readFileSync(join(half, 'cluster.secret'), 'utf8')).toBe('kept\n');
    await keygen(dir, '--force');
    const after = contents(dir);
    expect(after[0]).not.toBe(before[0]);
    expect(after[1]).not.toBe(before[1]);
    for (const f of files) expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
  });

  it('with --ca: a CA and, per node of the config, its folder (ca-cert.pem, server-cert.pem, server-key.pem) naming the node and its addresses', async () => {
    const dir = tempDir();
    const config = join(dir, 'cluster.json');
    writeFileSync(config, JSON.stringify({
      nodes: {
        a: { nbd: '10.0.0.1:10809', peer: '10.0.1.1:7789', admin: '127.0.0.1:9180', dataDir: 'a' },
        b: { nbd: '0.0.0.0:10809', peer: 'store-b.example:7789', admin: '127.0.0.1:9180', dataDir: 'b' },
      },
      volumes: { vol0: { size: '1G' } },
    }));
    await expect(keygen(join(dir, 'keys'), '--ca')).rejects.toThrow(/--ca needs --config FILE/);
    expect(await keygen(join(dir, 'keys'), '--ca', '--config', config)).toMatch(/"peerCertificates": ".*certs"/);
    const at = (...p: string[]) => join(dir, 'keys', ...p);
    const ca = new X509Certificate(readFileSync(at('ca', 'ca-cert.pem')));
    expect(ca.ca).toBe(true);
    expect(ca.subject).not.toMatch(/a\+b/); // no cluster id: the listener shows its issuer to anyone
    expect(statSync(at('ca', 'ca-key.pem')).mode & 0o777).toBe(0o600);
    for (const [node, names] of [['a', 'DNS:a, IP Address:10.0.0.1, IP Address:10.0.1.1'], ['b', 'DNS:b, DNS:store-b.example']] as const) {
      const cert = new X509Certificate(readFileSync(at('certs', node, 'server-cert.pem')));
      expect(cert.subject).toBe(`CN=${node}`);
      expect(cert.subjectAltName).toBe(names);
      expect(cert.checkIssued(ca) && cert.verify(ca.publicKey)).toBe(true);
      expect(cert.keyUsage).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'])); // TLS server and client
      expect(readFileSync(at('certs', node, 'ca-cert.pem'), 'utf8')).toBe(readFileSync(at('ca', 'ca-cert.pem'), 'utf8'));
      expect(statSync(at('certs', node, 'server-key.pem')).mode & 0o777).toBe(0o600);
      expect(statSync(at('certs', node)).mode & 0o777).toBe(0o700);
    }
    // Nothing is overwritten without --force, not even when only one certificate is there.
    const before = readFileSync(at('certs', 'b', 'server-cert.pem'), 'utf8');
    await expect(keygen(at(), '--ca', '--config', config)).rejects.toThrow(/exist: keygen does not overwrite .*--force/);
    const half = join(dir, 'half');
    await keygen(half, '--ca', '--config', config);
    for (const f of ['admin.token', 'cluster.secret', 'ca/ca-cert.pem', 'ca/ca-key.pem']) rmSync(join(half, f));
    await expect(keygen(half, '--ca', '--config', config)).rejects.toThrow(/certs\/a\/ca-cert\.pem.* exist/);
    expect(() => statSync(join(half, 'admin.token'))).toThrow(/ENOENT/);
    await keygen(at(), '--ca', '--config', config, '--force');
    expect(readFileSync(at('certs', 'b', 'server-cert.pem'), 'utf8')).not.toBe(before);
    expect(new X509Certificate(readFileSync(at('certs', 'b', 'server-cert.pem'))).checkIssued(new X509Certificate(readFileSync(at('ca', 'ca-cert.pem'))))).toBe(true);
  });

  it('with --client NAME: a host certificate (clients/NAME: ca-cert.pem, client-cert.pem, client-key.pem) from the CA, with --ca or later; the cluster keys untouched', async () => {
    const dir = tempDir();
    const config = join(dir, 'cluster.json');
    writeFileSync(config, JSON.stringify({ nodes: { a: { nbd: '127.0.0.1:10809', peer: '127.0.0.1:7789', admin: '127.0.0.1:9180', dataDir: 'a' }, b: { nbd: '127.0.0.1:10810', peer: '127.0.0.1:7790', admin: '127.0.0.1:9181', dataDir: 'b' } }, volumes: { vol0: { size: '1G' } } }));
    const keys = join(dir, 'keys');
    await expect(keygen(keys, '--client', 'host1')).rejects.toThrow(/no CA in .*ca-key\.pem.*keygen --ca/);
    expect(() => statSync(join(keys, 'clients'))).toThrow(/ENOENT/);
    expect(await keygen(keys, '--ca', '--config', config, '--client', 'host1')).toMatch(/clients\/host1: for host host1/);
    const before = contents(keys);
    for (const bad of ['../x', '.hidden', 'a/b', '', 'x'.repeat(65)]) await expect(keygen(keys, '--client', bad)).rejects.toThrow(/client name/);
    await keygen(keys, '--client', 'host2', '--client', 'host3');
    expect(contents(keys)).toEqual(before); // admin.token and cluster.secret stay
    const ca = new X509Certificate(readFileSync(join(keys, 'ca', 'ca-cert.pem')));
    for (const host of ['host1', 'host2', 'host3']) {
      const at = (f: string) => join(keys, 'clients', host, f);
      const cert = new X509Certificate(readFileSync(at('client-cert.pem')));
      expect(cert.subject).toBe(`CN=${host}`);
      expect(cert.checkIssued(ca) && cert.verify(ca.publicKey)).toBe(true);
      expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']); // TLS client only: it cannot pose as a node
      expect(statSync(at('client-key.pem')).mode & 0o777).toBe(0o600);
      expect(readFileSync(at('ca-cert.pem'), 'utf8')).toBe(readFileSync(join(keys, 'ca', 'ca-cert.pem'), 'utf8'));
    }
    const kept = readFileSync(join(keys, 'clients', 'host2', 'client-cert.pem'), 'utf8');
    await expect(keygen(keys, '--client', 'host2')).rejects.toThrow(/host2\/.*exist: keygen does not overwrite/);
    expect(readFileSync(join(keys, 'clients', 'host2', 'client-cert.pem'), 'utf8')).toBe(kept);
    await keygen(keys, '--client', 'host2', '--force');
    expect(readFileSync(join(keys, 'clients', 'host2', 'client-cert.pem'), 'utf8')).not.toBe(kept);
  });
});
