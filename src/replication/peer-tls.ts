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

export const PSK_IDENTITY = 'nbd-mirror';
const CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';
const KEY_LABEL = 'nbd-mirror peer link TLS-PSK v1';

/** The peer link's pre-shared key, from the cluster secret. */
export function peerLinkKey(secret: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), KEY_LABEL, 32));
}

/** Makes both ends of TLS-PSK peer-link connections with one key. */
export class PeerTls {
  private readonly context = tls.createSecureContext({ minVersion: 'TLSv1.3', ciphers: CIPHERS });

  constructor(private readonly key: Buffer) {}

  /** The cluster secret's peer-link TLS. */
  static fromSecret(secret: Buffer): PeerTls {
    return new PeerTls(peerLinkKey(secret));
  }

  /** Dials `to`; 'secureConnect' says the peer proved it holds the key. */
  connect(to: { host: string; port: number; localAddress?: string }): tls.TLSSocket {
    return tls.connect({
      ...to,
      secureContext: this.context,
      pskCallback: () => ({ identity: PSK_IDENTITY, psk: this.key }),
      // No certificate to check: the PSK authenticated the server.
      checkServerIdentity: () => undefined,
    });
  }

  /** Starts the server side on an accepted socket; 'secure' says the client proved it holds the key. */
  accept(accepted: net.Socket): tls.TLSSocket {
    // Node takes pskCallback on a server-side TLSSocket as on tls.Server; only its types omit it.
    const options: tls.TLSSocketOptions & Pick<tls.TlsOptions, 'pskCallback'> = {
      isServer: true,
      secureContext: this.context,
      // An unknown identity gets no key: the handshake fails.
      pskCallback: (_socket, identity) => (identity === PSK_IDENTITY ? this.key : null),
    };
    return new tls.TLSSocket(accepted, options);
  }
}

/** OpenSSL's reasons for a failed handshake, in the words an operator acts on. */
const FAILURES: Record<string, string> = {
  ERR_SSL_BINDER_DOES_NOT_VERIFY: 'the other end does not hold this cluster secret',
  ERR_SSL_SSLV3_ALERT_ILLEGAL_PARAMETER: 'the peer refused this node\'s key: the two nodes have different cluster secrets',
  ERR_SSL_WRONG_VERSION_NUMBER: 'not TLS: a peer without security.clusterSecret, or not nbd-mirror at all',
  ERR_SSL_NO_SHARED_CIPHER: 'no pre-shared key offered: a TLS client without this cluster secret',
  ECONNRESET: 'the other end hung up during the TLS handshake (a node without security.clusterSecret, or one that takes no connections from this address)',
};

/** Why a peer-link TLS handshake failed, for the log. */
export function handshakeFailure(err: Error & { code?: string; reason?: string }): string {
  const known = err.code === undefined ? undefined : FAILURES[err.code];
  return known ? `${known} (${err.code})` : `${err.code ?? 'error'}: ${err.reason ?? err.message}`;
}

/** Whether a connection's first bytes are a TLS handshake record (what a peer with a secret sends first). */
export function looksLikeTls(chunk: Buffer): boolean {
  return chunk.length >= 2 && chunk[0] === 0x16 && chunk[1] === 0x03;
}
