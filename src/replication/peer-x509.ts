// Mutual x509 on the peer link, the alternative to the cluster secret's TLS-PSK (peer-tls.ts):
// each node holds a certificate of the cluster CA that names it, and each end checks the other's
// against the CA *and* against the name of the one node it may be — the dialer knows whom it
// dials, the listener accepts only its configured peer. A certificate of the right CA for
// another name (a host's client certificate, a third node's) is refused as surely as one of
// another CA.
//
// Choices, and why:
// - TLS 1.3 only: it encrypts the certificates (TLS 1.2 sends them in clear, and they name the
//   nodes). What a host that reaches the listener without a certificate can still learn is the
//   listener's certificate — it is sent before the client proves anything — so a node's
//   certificate should carry nothing but its node name (and the addresses NBD clients check).
// - The listener's check goes through tls.Server (tls-accept.ts), whose OpenSSL verification is
//   the same as the dialer's: chains, validity dates, key usage. Then the name: OpenSSL's own
//   host check (X509_check_host through X509Certificate.checkHost), exact, no wildcards, the
//   subject's CN only when the certificate has no DNS name.
// - The files are the node's NBD TLS folder layout (ca-cert.pem, server-cert.pem,
//   server-key.pem, as nbdkit reads them): one folder per node serves both. The certificate is
//   presented by both ends (the node dials or listens), so it must allow TLS client and server use.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type net from 'node:net';
import tls from 'node:tls';
import { ConfigError } from '../config/cluster.js';
import { acceptTls } from '../security/tls-accept.js';
import { describeFailure, type PeerDial, type PeerTls } from './peer-tls.js';

/** A node's files in its folder of security.peerCertificates (nbdkit's names). */
export const PEER_CERT_FILES = { ca: 'ca-cert.pem', cert: 'server-cert.pem', key: 'server-key.pem' } as const;

export interface PeerCertificates {
  /** The cluster CA's certificate (PEM): the other node's certificate must chain to it. */
  readonly ca: Buffer;
  /** This node's certificate (PEM, with any intermediates after it) and its key. */
  readonly cert: Buffer;
  readonly key: Buffer;
}

const NAME_REFUSED = 'ERR_PEER_CERT_NAME';
/**
 * AES-128-GCM first, as on the TLS-PSK link: with AES instructions it is the fastest suite in
 * Node's OpenSSL (2.05 GB/s against 1.77 for AES-256-GCM and 1.42 for ChaCha20 on one core of
 * the test machine, docs/BENCHMARKS.md), and OpenSSL's default order would pick AES-256-GCM.
 */
const CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';

/** Both ends of mutual-x509 peer-link connections, for one node and its one peer. */
export class PeerX509 implements PeerTls {
  readonly kind = 'mutual x509 (security.peerCertificates)';
  readonly expires: Date;
  private readonly options: tls.SecureContextOptions;
  private readonly context: tls.SecureContext;

  /** `peerName`: the node the other end must be. */
  constructor(files: PeerCertificates, private readonly peerName: string) {
    this.options = { ca: files.ca, cert: files.cert, key: files.key, minVersion: 'TLSv1.3', ciphers: CIPHERS };
    this.context = tls.createSecureContext(this.options);
    this.expires = new Date(new X509Certificate(files.cert).validTo);
  }

  /**
   * Reads `dir` (this node's folder: ca-cert.pem, server-cert.pem, server-key.pem) and checks it
   * at start: a missing file, a bad PEM, a key that does not match, a certificate that does not
   * name `node` or is out of its dates stops the node with a message naming the file.
   */
  static load(dir: string, node: string, peerName: string): PeerX509 {
    const read = (name: string): Buffer => {
      const path = join(dir, name);
      try {
        return readFileSync(path);
      } catch (err) {
        throw new ConfigError(`cannot read the peer-link certificate file ${path}: ${(err as Error).message} (nbd-mirror keygen --ca writes one per node)`);
      }
    };
    const files = { ca: read(PEER_CERT_FILES.ca), cert: read(PEER_CERT_FILES.cert), key: read(PEER_CERT_FILES.key) };
    const certPath = join(dir, PEER_CERT_FILES.cert);
    let own: X509Certificate;
    try {
      own = new X509Certificate(files.cert);
      new X509Certificate(files.ca);
    } catch (err) {
      throw new ConfigError(`the peer-link certificates in ${dir} cannot be read as PEM certificates: ${(err as Error).message}`);
    }
    // The peer refuses a certificate that does not name this node: say so now, not at every dial.
    if (!namesNode(own, node)) throw new ConfigError(`${certPath} is for ${certificateNames(own)}, not this node "${node}": the peer accepts only a certificate naming "${node}" (DNS name, or CN without DNS names)`);
    const now = Date.now();
    if (now > Date.parse(own.validTo) || now < Date.parse(own.validFrom)) throw new ConfigError(`${certPath} is valid from ${own.validFrom} to ${own.validTo} only: make a new one (nbd-mirror keygen --ca --force, docs/SECURITY.md)`);
    try {
      return new PeerX509(files, peerName);
    } catch (err) {
      throw new ConfigError(`the peer-link certificates in ${dir} cannot be used: ${(err as Error).message}`);
    }
  }

  connect(to: PeerDial): tls.TLSSocket {
    return tls.connect({
      ...to,
      secureContext: this.context,
      // The CA check is OpenSSL's (rejectUnauthorized is on by default); then the name.
      checkServerIdentity: (_host, cert) => nameRefusal(new X509Certificate(cert.raw), this.peerName),
    });
  }

  accept(accepted: net.Socket, done: (err: Error | null, socket?: tls.TLSSocket) => void): void {
    acceptTls({ ...this.options, requestCert: true, rejectUnauthorized: true }, accepted, (err, t) => {
      // A certificate OpenSSL refused ends the socket with only a hang-up error: why is on the socket.
      if (err) return done(t.authorizationError ? Object.assign(new Error(String(t.authorizationError)), { code: verifyCode(t.authorizationError) }) : err);
      const cert = t.getPeerX509Certificate();
      const refused = cert ? nameRefusal(cert, this.peerName) : Object.assign(new Error('no certificate'), { code: 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE' });
      if (refused) {
        t.destroy();
        return done(refused);
      }
      done(null, t);
    });
  }

  failure(err: Error & { code?: string; reason?: string }): string {
    return err.code === NAME_REFUSED ? err.message : describeFailure(err, X509_FAILURES);
  }
}

/** Does `cert` name `node` (exactly; its CN only when it has no DNS name)? */
function namesNode(cert: X509Certificate, node: string): boolean {
  return cert.checkHost(node, { subject: 'default', wildcards: false }) !== undefined;
}

/** Undefined when `cert` names the expected peer, else the error that refuses it. */
function nameRefusal(cert: X509Certificate, peerName: string): Error | undefined {
  if (namesNode(cert, peerName)) return undefined;
  return Object.assign(new Error(`the peer's certificate is for ${certificateNames(cert)}, not the peer node "${peerName}" (${NAME_REFUSED})`), { code: NAME_REFUSED });
}

/** What a certificate names, for a message: its subject and DNS/IP names. */
function certificateNames(cert: X509Certificate): string {
  const subject = cert.subject.replace(/\n/g, ', ');
  return cert.subjectAltName ? `${subject} (${cert.subjectAltName})` : subject;
}

/** authorizationError is a string code on some Node versions, an Error with one on others. */
function verifyCode(e: unknown): string {
  return typeof e === 'string' ? e : ((e as { code?: string }).code ?? String(e));
}

/** OpenSSL's reasons for a failed mutual-x509 handshake, in the words an operator acts on. */
const NOT_OUR_CA = "the peer's certificate is not signed by this cluster's CA (ca-cert.pem)";
const X509_FAILURES: Record<string, string> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: NOT_OUR_CA,
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: NOT_OUR_CA,
  SELF_SIGNED_CERT_IN_CHAIN: NOT_OUR_CA,
  DEPTH_ZERO_SELF_SIGNED_CERT: `${NOT_OUR_CA}: it is self-signed`,
  CERT_SIGNATURE_FAILURE: NOT_OUR_CA,
  CERT_HAS_EXPIRED: "the peer's certificate has expired",
  CERT_NOT_YET_VALID: "the peer's certificate is not valid yet (check both clocks)",
  INVALID_PURPOSE: "the peer's certificate is not for TLS client and server use (extendedKeyUsage)",
  ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE: 'the peer presented no certificate: a node with only security.clusterSecret (TLS-PSK), or not nbd-mirror',
  ERR_SSL_NO_SHARED_CIPHER: 'the peer offered a pre-shared key and no certificate: it has only security.clusterSecret (TLS-PSK) set, this node security.peerCertificates',
  ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE: 'the peer takes no certificate: it has only security.clusterSecret (TLS-PSK) set, this node security.peerCertificates',
  ERR_SSL_WRONG_VERSION_NUMBER: 'not TLS: a peer without security.peerCertificates, or not nbd-mirror at all',
  ECONNRESET: "the other end hung up during the TLS handshake: it refused this node's certificate (its log says why), has no security.peerCertificates, or takes no connections from this address",
};
