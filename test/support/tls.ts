// TLS keys for tests, made with the tools an operator uses (gnutls' psktool and certtool, as
// docs/SECURITY.md tells): PSK files, and CAs with server and client certificates laid out in
// the directories nbdkit (server), libnbd and qemu (client) read.
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { toolEnv } from './tools.js';

export const PSK_USER = 'alice';

export interface TlsKeys {
  readonly dir: string;
  /** `alice:KEY`, the client's and the server's key file. */
  readonly psk: string;
  /** qemu's tls-creds-psk dir: the same key as `keys.psk`. */
  readonly qemuPskDir: string;
  /** `alice` with another key. */
  readonly wrongPsk: string;
  /** The server's --tls-certificates: ca-cert.pem, server-cert.pem, server-key.pem. */
  readonly serverCerts: string;
  /** A client that trusts the CA and has a certificate of its own (libnbd and qemu layout). */
  readonly clientCerts: string;
  /** A client that trusts the CA but has no certificate. */
  readonly clientNoCert: string;
  /** A client that trusts the CA, with a certificate of another CA (the server must refuse it). */
  readonly rogueClientCerts: string;
  /** A client that trusts only another CA (it must refuse the server). */
  readonly otherCaCerts: string;
  cleanup(): void;
}

function tool(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { env: toolEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A private key (ECDSA: quick to make) at `path`. */
function privateKey(path: string): void {
  tool('certtool', ['--generate-privkey', '--key-type=ecdsa', '--outfile', path]);
}

function template(dir: string, name: string, lines: string[]): string {
  const path = join(dir, `${name}.info`);
  writeFileSync(path, `${lines.join('\n')}\n`);
  return path;
}

/** A self-signed CA: `name`-key.pem and `name`-cert.pem in `dir`. */
function makeCa(dir: string, name: string): { key: string; cert: string } {
  const key = join(dir, `${name}-key.pem`);
  const cert = join(dir, `${name}-cert.pem`);
  privateKey(key);
  const info = template(dir, name, [`cn = ${name}`, 'ca', 'cert_signing_key', 'expiration_days = 30']);
  tool('certtool', ['--generate-self-signed', '--load-privkey', key, '--template', info, '--outfile', cert]);
  return { key, cert };
}

/** A certificate signed by `ca` for `role` (server: localhost/127.0.0.1; client: a host name). */
function makeCert(dir: string, ca: { key: string; cert: string }, role: 'server' | 'client', keyOut: string, certOut: string): void {
  privateKey(keyOut);
  const lines =
    role === 'server'
      ? ['cn = localhost', 'dns_name = localhost', 'ip_address = 127.0.0.1', 'tls_www_server', 'signing_key', 'expiration_days = 30']
      : ['cn = test-client', 'dns_name = test-client', 'tls_www_client', 'signing_key', 'expiration_days = 30'];
  const info = template(dir, `${role}-${basename(dirname(certOut))}`, lines);
  tool('certtool', ['--generate-certificate', '--load-privkey', keyOut, '--load-ca-certificate', ca.cert, '--load-ca-privkey', ca.key, '--template', info, '--outfile', certOut]);
}

export function makeTlsKeys(): TlsKeys {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-tls-'));
  const sub = (name: string) => {
    const d = join(dir, name);
    mkdirSync(d);
    return d;
  };
  const psk = join(sub('psk'), 'keys.psk');
  tool('psktool', ['-u', PSK_USER, '-p', psk]);
  const qemuPskDir = sub('qemu-psk');
  copyFileSync(psk, join(qemuPskDir, 'keys.psk'));
  const wrongPsk = join(sub('wrong-psk'), 'keys.psk');
  tool('psktool', ['-u', PSK_USER, '-p', wrongPsk]);

  const cas = sub('ca');
  const ca = makeCa(cas, 'ca');
  const rogueCa = makeCa(cas, 'rogue-ca');
  const serverCerts = sub('server');
  copyFileSync(ca.cert, join(serverCerts, 'ca-cert.pem'));
  makeCert(cas, ca, 'server', join(serverCerts, 'server-key.pem'), join(serverCerts, 'server-cert.pem'));
  const clientCerts = sub('client');
  copyFileSync(ca.cert, join(clientCerts, 'ca-cert.pem'));
  makeCert(cas, ca, 'client', join(clientCerts, 'client-key.pem'), join(clientCerts, 'client-cert.pem'));
  const clientNoCert = sub('client-nocert');
  copyFileSync(ca.cert, join(clientNoCert, 'ca-cert.pem'));
  const rogueClientCerts = sub('rogue-client');
  copyFileSync(ca.cert, join(rogueClientCerts, 'ca-cert.pem'));
  makeCert(cas, rogueCa, 'client', join(rogueClientCerts, 'client-key.pem'), join(rogueClientCerts, 'client-cert.pem'));
  const otherCaCerts = sub('other-ca');
  copyFileSync(rogueCa.cert, join(otherCaCerts, 'ca-cert.pem'));
  return {
    dir,
    psk,
    qemuPskDir,
    wrongPsk,
    serverCerts,
    clientCerts,
    clientNoCert,
    rogueClientCerts,
    otherCaCerts,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/**
 * `cmd ARGS` run so that libnbd takes the X.509 files of `certs` from ~/.pki/libnbd: the only way
 * to hand them to a client that takes a bare nbds:// URI (fio's nbd engine does not let libnbd
 * read files named in the URI). libnbd run by root reads /etc/pki/libnbd instead, which a test
 * must not touch, so root runs it as nobody (setpriv), with the files readable to it.
 */
export function withLibnbdCerts(keys: TlsKeys, certs: string, cmd: string, args: string[]): { cmd: string; args: string[] } {
  const home = join(keys.dir, `home-${basename(certs)}`);
  const pki = join(home, '.pki', 'libnbd');
  mkdirSync(pki, { recursive: true });
  for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) {
    if (existsSync(join(certs, f))) copyFileSync(join(certs, f), join(pki, f));
  }
  const asRoot = process.geteuid?.() === 0;
  if (asRoot) {
    chmodSync(keys.dir, 0o755); // mkdtemp made it private
    for (const f of readdirSync(pki)) chmodSync(join(pki, f), 0o644);
  }
  const user = asRoot ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] : [];
  return { cmd: 'env', args: [`HOME=${home}`, ...user, cmd, ...args] };
}
