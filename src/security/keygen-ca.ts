// `nbd-mirror keygen --ca --config FILE`: a small CA for one cluster and one certificate per node,
// in the layout nbdkit, qemu and libnbd read (ca-cert.pem, server-cert.pem, server-key.pem), so
// one folder per node serves both its peer link (security.peerCertificates, mutual x509) and its
// NBD TLS (nodes.N.tls.certificates):
//
//   DIR/ca/ca-cert.pem, ca-key.pem          the CA; its key signs, keep it off the nodes
//   DIR/certs/NODE/ca-cert.pem              a copy of the CA certificate
//   DIR/certs/NODE/server-cert.pem          the node's certificate
//   DIR/certs/NODE/server-key.pem           its key (0600)
//   DIR/clients/NAME/ca-cert.pem,           with --client NAME: a host's client certificate, for
//     client-cert.pem, client-key.pem       nodes that check clients (--tls-verify-peer), in the
//                                           folder layout qemu's tls-creds-x509 and libnbd read
//
// Keys are ECDSA P-256, made and used by Node's own crypto (WebCrypto, i.e. OpenSSL);
// @peculiar/x509 only lays out the certificates (README, Libraries: why this library). It needs
// a Reflect polyfill (its dependency tsyringe does), so only this command loads this module.
//
// A node's certificate names the node (CN and DNS name: what its peer checks) and every address
// the config gives it that is not a wildcard (nbd and peer hosts, as IP or DNS names: what NBD
// clients check), and allows TLS server and client use (a node dials or listens). The CA's name
// carries no cluster id: the listener's certificate, with its issuer, is visible to whoever can
// open a TLS connection to it, before that one proves anything.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { randomBytes, webcrypto } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import type { ClusterConfig } from '../config/cluster.js';
import { PEER_CERT_FILES } from '../replication/peer-x509.js';
import { writeNewFile } from './key-file.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
const DAY_MS = 86_400_000;
export const CA_DAYS = 3650;
export const NODE_DAYS = 1825;

/** The folders under keygen's DIR. */
export const CA_DIR = 'ca';
export const CERTS_DIR = 'certs';
export const CA_KEY_FILE = 'ca-key.pem';
export const CLIENTS_DIR = 'clients';
/** A host's folder, as qemu (tls-creds-x509 endpoint=client) and libnbd (tls-certificates=) read it. */
export const CLIENT_CERT_FILES = { ca: 'ca-cert.pem', cert: 'client-cert.pem', key: 'client-key.pem' } as const;


/** A certificate and its key, as PEM text. */
export interface PemPair {
  readonly cert: string;
  readonly key: string;
}

/** A CA that can sign. */
export interface Ca extends PemPair {
  readonly certificate: x509.X509Certificate;
  readonly keys: webcrypto.CryptoKeyPair;
}

/** What a node's certificate names: its node name first, then the addresses clients use. */
export interface NodeNames {
  readonly node: string;
  readonly hosts: readonly string[];
}

/** A fresh CA, valid from now for `days`. */
export async function makeCa(subject = `nbd-mirror CA ${randomBytes(4).toString('hex')}`, days = CA_DAYS): Promise<Ca> {
  const keys = await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']);
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: [{ CN: [subject] }],
    notBefore: new Date(Date.now() - 60_000), // a peer whose clock is a little behind accepts it too
    notAfter: new Date(Date.now() + days * DAY_MS),
    keys,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certificate, keys, cert: certificate.toString('pem'), key: await keyPem(keys.privateKey) };
}

/**
 * A certificate signed by `ca` for `names` (CN = the first name): a node's (`node`: TLS server and
 * client use, every name in the SAN) or a host's (`client`: TLS client use only).
 */
export async function issueCertificate(ca: Ca, names: NodeNames, days = NODE_DAYS, use: 'node' | 'client' = 'node'): Promise<PemPair> {
  const keys = await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']);
  const alt = [...new Set([names.node, ...names.hosts])].map((h) => (net.isIP(h) ? { type: 'ip' as const, value: h } : { type: 'dns' as const, value: h }));
  const usages = use === 'node' ? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth] : [x509.ExtendedKeyUsage.clientAuth];
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: [{ CN: [names.node] }],
    issuer: ca.certificate.subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + days * DAY_MS),
    signingKey: ca.keys.privateKey,
    publicKey: keys.publicKey,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(usages),
      new x509.SubjectAlternativeNameExtension(alt),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(ca.certificate, false),
    ],
  });
  return { cert: certificate.toString('pem'), key: await keyPem(keys.privateKey) };
}

/** Each node of the config with the addresses it is reached at (wildcard listen addresses name nothing). */
export function nodeNames(config: ClusterConfig): NodeNames[] {
  return Object.entries(config.nodes)
    .sort(([x], [y]) => (x < y ? -1 : 1))
    .map(([node, n]) => ({ node, hosts: [n.nbd.host, n.peer.host].filter((h) => h !== '0.0.0.0' && h !== '::') }));
}

/** Every file writeClusterCa writes, so keygen can refuse before it writes any. */
export function clusterCaFiles(dir: string, nodes: readonly NodeNames[]): string[] {
  const perNode = nodes.flatMap(({ node }) => Object.values(PEER_CERT_FILES).map((f) => join(dir, CERTS_DIR, node, f)));
  return [join(dir, CA_DIR, PEER_CERT_FILES.ca), join(dir, CA_DIR, CA_KEY_FILE), ...perNode];
}

/** Makes the CA and one certificate per node under `dir` (layout above); `replace` allows overwriting. Returns the CA. */
export async function writeClusterCa(dir: string, nodes: readonly NodeNames[], replace: boolean): Promise<Ca> {
  refuseExisting(clusterCaFiles(dir, nodes), replace);
  const ca = await makeCa();
  const issued = await Promise.all(nodes.map((n) => issueCertificate(ca, n)));
  mkdirSync(join(dir, CA_DIR), { recursive: true, mode: 0o700 });
  writeNewFile(join(dir, CA_DIR, PEER_CERT_FILES.ca), ca.cert, replace, 0o644);
  writeNewFile(join(dir, CA_DIR, CA_KEY_FILE), ca.key, replace, 0o600);
  nodes.forEach(({ node }, i) => writeFolder(join(dir, CERTS_DIR, node), ca, issued[i]!, PEER_CERT_FILES, replace));
  return ca;
}

/** Every file writeClientCertificates writes. */
export function clientFiles(dir: string, names: readonly string[]): string[] {
  return names.flatMap((n) => Object.values(CLIENT_CERT_FILES).map((f) => join(dir, CLIENTS_DIR, n, f)));
}

/** One client certificate per name under DIR/clients/NAME, signed by `ca` (or by the CA keygen made in `dir` earlier). */
export async function writeClientCertificates(dir: string, names: readonly string[], replace: boolean, ca?: Ca): Promise<void> {
  refuseExisting(clientFiles(dir, names), replace);
  const signer = ca ?? (await loadCa(dir));
  for (const name of names) writeFolder(join(dir, CLIENTS_DIR, name), signer, await issueCertificate(signer, { node: name, hosts: [] }, NODE_DAYS, 'client'), CLIENT_CERT_FILES, replace);
}

/** The CA an earlier `keygen --ca` wrote in `dir`. */
async function loadCa(dir: string): Promise<Ca> {
  const [certPath, keyPath] = [join(dir, CA_DIR, PEER_CERT_FILES.ca), join(dir, CA_DIR, CA_KEY_FILE)];
  if (!existsSync(certPath) || !existsSync(keyPath)) throw new Error(`no CA in ${join(dir, CA_DIR)} (${PEER_CERT_FILES.ca} and ${CA_KEY_FILE}): make one with keygen --ca --config FILE, or give --ca with --client`);
  const cert = readFileSync(certPath, 'utf8');
  const key = readFileSync(keyPath, 'utf8');
  const certificate = new x509.X509Certificate(cert);
  const privateKey = await webcrypto.subtle.importKey('pkcs8', x509.PemConverter.decodeFirst(key), ALGORITHM, true, ['sign']);
  const publicKey = await certificate.publicKey.export();
  return { certificate, keys: { privateKey, publicKey }, cert, key };
}

function refuseExisting(files: readonly string[], replace: boolean): void {
  if (replace) return;
  const present = files.filter((f) => existsSync(f));
  if (present.length > 0) throw new Error(`${present.join(', ')} exist: keygen does not overwrite certificates the nodes or hosts may be using (--force replaces them)`);
}

/** A folder (0700) with the CA's certificate, a certificate and its key (0600). */
function writeFolder(folder: string, ca: Ca, pair: PemPair, names: { readonly ca: string; readonly cert: string; readonly key: string }, replace: boolean): void {
  mkdirSync(folder, { recursive: true, mode: 0o700 });
  writeNewFile(join(folder, names.ca), ca.cert, replace, 0o644);
  writeNewFile(join(folder, names.cert), pair.cert, replace, 0o644);
  writeNewFile(join(folder, names.key), pair.key, replace, 0o600);
}

/** A positive 128-bit serial number, as hex (RFC 5280: unique per CA, at most 20 bytes). */
function serial(): string {
  const b = randomBytes(16);
  b[0]! &= 0x7f;
  return b.toString('hex');
}

async function keyPem(key: webcrypto.CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', key), 'PRIVATE KEY');
}
