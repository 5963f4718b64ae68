// TLS-PSK on the peer link: with a cluster secret configured, every peer-link connection is a
// TLS 1.3 session keyed by it before a single frame is sent, so HELLO (cluster id, volume names,
// generations) and everything after travel encrypted and authenticated. A host without the key
// cannot complete a handshake, so it never gets to send a frame; bytes recorded from a real
// session cannot be replayed either (each handshake mixes fresh randoms and ECDHE shares into
// its keys, so the recorded Finished message verifies in no other session).
//
// Choices, and why:
// - TLS 1.3 only, with the psk_dhe_ke mode OpenSSL uses by default: the key authenticates, a
//   fresh ECDHE exchange per connection gives forward secrecy (a key stolen later does not
//   decrypt recorded sessions). No certificate is involved: the server has none, so a client
//   that offers no PSK finds no way to authenticate and the handshake fails.
// - The SHA-256 suites only: OpenSSL gives a key set by a PSK callback to those alone. AES-GCM
//   first (AES-NI makes it the fastest), ChaCha20 for CPUs without AES instructions.
// - The PSK identity, sent in clear in the ClientHello, is a fixed string for every cluster: the
//   cluster id, or any fingerprint of the key, would tell an onlooker which cluster it watches.
// - The key is derived from the cluster secret (HKDF-SHA256, its own label): the same secret
//   keys the admin and witness protocols too, and a key one of them leaks opens no other.
import { hkdfSync } from 'node:crypto';
import type net from 'node:net';
import tls from 'node:tls';
import { acceptTls } from '../security/tls-accept.js';

/** Where the dialer connects (the peer's address, from this node's), and where what it reads goes. */
export interface PeerDial {
  host: string;
  port: number;
  localAddress?: string;
  /**
   * Decrypted bytes into buffers the link gives (net.Socket's `onread`, which tls.connect takes
   * too): frame bodies land straight in their slots, and no Buffer is made per TLS record.
   */
  onread?: net.OnReadOpts;
}

/**
 * How the peer link authenticates and encrypts: TLS-PSK with the cluster secret (here) or mutual
 * x509 with the cluster CA (peer-x509.ts). The link runs the same either way: the dialer's
 * socket says 'secureConnect' once the peer is authenticated, the listener gets a socket only
 * once the dialer is, and a failure is described in words an operator acts on.
 */
export interface PeerTls {
  /** What authenticates the link, for the log ("TLS-PSK", "mutual x509"). */
  readonly kind: string;
  /** When this node's credentials stop working (a certificate's end date); none for a key. */
  readonly expires?: Date;
  /** Dials; 'secureConnect' says the peer proved who it is. */
  connect(to: PeerDial): tls.TLSSocket;
  /** Runs the server side on an accepted socket; `done` once, with the socket only if the dialer proved who it is. */
  accept(accepted: net.Socket, done: (err: Error | null, socket?: tls.TLSSocket) => void): void;
  /** Why a handshake failed, for the log. */
  failure(err: Error & { code?: string; reason?: string }): string;
}

export const PSK_IDENTITY = 'nbd-mirror';
const CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';
const KEY_LABEL = 'nbd-mirror peer link TLS-PSK v1';

/** The peer link's pre-shared key, from the cluster secret. */
export function peerLinkKey(secret: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), KEY_LABEL, 32));
}

/** Makes both ends of TLS-PSK peer-link connections with one key. */
export class PeerPsk implements PeerTls {
  readonly kind = 'TLS-PSK (security.clusterSecret)';
  private readonly context = tls.createSecureContext({ minVersion: 'TLSv1.3', ciphers: CIPHERS });

  constructor(private readonly key: Buffer) {}

  /** The cluster secret's peer-link TLS. */
  static fromSecret(secret: Buffer): PeerPsk {
    return new PeerPsk(peerLinkKey(secret));
  }

  connect(to: PeerDial): tls.TLSSocket {
    return tls.connect({
      ...to,
      secureContext: this.context,
      pskCallback: () => ({ identity: PSK_IDENTITY, psk: this.key }),
      // No certificate to check: the PSK authenticated the server.
      checkServerIdentity: () => undefined,
    });
  }

  accept(accepted: net.Socket, done: (err: Error | null, socket?: tls.TLSSocket) => void): void {
    const options = {
      minVersion: 'TLSv1.3' as const,
      ciphers: CIPHERS,
      // An unknown identity gets no key: the handshake fails.
      pskCallback: (_socket: tls.TLSSocket, identity: string) => (identity === PSK_IDENTITY ? this.key : null),
    };
    acceptTls(options, accepted, (err, t) => (err ? done(err) : done(null, t)));
  }

  failure(err: Error & { code?: string; reason?: string }): string {
    return describeFailure(err, PSK_FAILURES);
  }
}

const CERTIFICATE_INSTEAD = 'the peer answered with a certificate instead of the pre-shared key: it has security.peerCertificates set (mutual x509), this node only security.clusterSecret';
/** OpenSSL's reasons for a failed TLS-PSK handshake, in the words an operator acts on. */
const PSK_FAILURES: Record<string, string> = {
  ERR_SSL_BINDER_DOES_NOT_VERIFY: 'the other end does not hold this cluster secret',
  ERR_SSL_SSLV3_ALERT_ILLEGAL_PARAMETER: 'the peer refused this node\'s key: the two nodes have different cluster secrets',
  ERR_SSL_WRONG_VERSION_NUMBER: 'not TLS: a peer without security.clusterSecret, or not nbd-mirror at all',
  ERR_SSL_NO_SHARED_CIPHER: 'no pre-shared key offered: a TLS client without this cluster secret (one with security.peerCertificates?)',
  // A client that offers no PSK leaves OpenSSL looking for a certificate this node does not have.
  ERR_SSL_NO_SUITABLE_SIGNATURE_ALGORITHM: 'no pre-shared key offered: the peer wants a certificate (it has security.peerCertificates set, mutual x509), this node has only security.clusterSecret',
  ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE: 'the peer takes no pre-shared key: it has security.peerCertificates set (mutual x509), this node only security.clusterSecret',
  ECONNRESET: 'the other end hung up during the TLS handshake (a node without security.clusterSecret, or one that takes no connections from this address)',
  // OpenSSL checks the certificate it got instead of a PSK answer against the system CAs, and fails.
  SELF_SIGNED_CERT_IN_CHAIN: CERTIFICATE_INSTEAD,
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: CERTIFICATE_INSTEAD,
  DEPTH_ZERO_SELF_SIGNED_CERT: CERTIFICATE_INSTEAD,
};

/** A handshake failure in an operator's words when `known` has its code, else OpenSSL's own. */
export function describeFailure(err: Error & { code?: string; reason?: string }, known: Record<string, string>): string {
  const words = err.code === undefined ? undefined : known[err.code];
  return words ? `${words} (${err.code})` : `${err.code ?? 'error'}: ${err.reason ?? err.message}`;
}

/** Whether a connection's first bytes are a TLS handshake record (what a peer with a secret sends first). */
export function looksLikeTls(chunk: Buffer): boolean {
  return chunk.length >= 2 && chunk[0] === 0x16 && chunk[1] === 0x03;
}
