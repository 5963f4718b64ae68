// NBD over TLS, server side, with the settings and files nbdkit uses (nbdkit-tls(1)): a
// certificates directory (ca-cert.pem, server-cert.pem, server-key.pem, optional ca-crl.pem) or
// a psktool key file. The handshake decides when TLS starts (STARTTLS); this module only turns
// the connection's socket into a TLS one, so the protocol code above never knows (nbdkit's crypto.c).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type net from 'node:net';
import tls from 'node:tls';
import { ConfigError } from '../config/cluster.js';
import type { TlsMode } from '../protocol/handshake.js';
import { loadPskFile, type PskKeys } from './psk-file.js';
import { acceptTls } from './tls-accept.js';

export interface NbdTlsSettings {
  readonly mode: TlsMode;
  /** Directory with ca-cert.pem, server-cert.pem, server-key.pem and, optionally, ca-crl.pem. */
  readonly certificates?: string;
  /** Clients must show a certificate signed by ca-cert.pem. */
  readonly verifyPeer?: boolean;
  /** psktool's `username:hexkey` file: clients authenticate with one of its keys instead of certificates. */
  readonly psk?: string;
}

/**
 * TLS 1.3 (any key exchange), then TLS 1.2 PSK suites with AEAD only (ECDHE first, for forward
 * secrecy): Node's default list drops every PSK suite, and gnutls clients offer TLS 1.2 PSK too.
 */
export const PSK_CIPHERS = [
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_128_GCM_SHA256',
  'ECDHE-PSK-CHACHA20-POLY1305',
  'PSK-AES256-GCM-SHA384',
  'PSK-CHACHA20-POLY1305',
  'PSK-AES128-GCM-SHA256',
].join(':');

/** A file of a certificates directory (nbdkit's and libnbd's layout); a missing optional one is undefined. */
export function readCertificateFile(dir: string, name: string, optional: boolean): Buffer | undefined {
  const path = join(dir, name);
  try {
    return readFileSync(path);
  } catch (err) {
    if (optional && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConfigError(`cannot read ${path}: ${(err as Error).message}`);
  }
}

/** What a finished TLS handshake gives the connection. */
export interface TlsPeer {
  readonly socket: tls.TLSSocket;
  readonly protocol: string | null;
  readonly cipher: string;
  /** The PSK identity the client used, if PSK. */
  readonly identity?: string;
}

export class NbdTls {
  private constructor(
    readonly mode: TlsMode,
    /** Everything `tls.createServer` needs, files already read. */
    private readonly options: tls.TlsOptions,
    private readonly keys: PskKeys | undefined,
  ) {}

  /** Reads and checks the files the settings name; `off` needs none and gives undefined. */
  static load(s: NbdTlsSettings): NbdTls | undefined {
    if (s.mode === 'off') return undefined;
    if (s.psk !== undefined && s.certificates !== undefined) throw new ConfigError('TLS: give a PSK file or a certificates directory, not both');
    if (s.psk !== undefined) {
      if (s.verifyPeer) throw new ConfigError('TLS: verify-peer checks client certificates; with a PSK file the key is the check');
      return new NbdTls(s.mode, { ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2' }, loadPskFile(s.psk));
    }
    if (s.certificates === undefined) throw new ConfigError(`TLS mode "${s.mode}" needs a certificates directory or a PSK file`);
    const read = (name: string, optional = false) => readCertificateFile(s.certificates!, name, optional);
    const options: tls.TlsOptions = {
      ca: read('ca-cert.pem'),
      cert: read('server-cert.pem'),
      key: read('server-key.pem'),
      crl: read('ca-crl.pem', true),
      minVersion: 'TLSv1.2',
      requestCert: s.verifyPeer === true,
      rejectUnauthorized: s.verifyPeer === true,
    };
    try {
      tls.createSecureContext(options); // a bad PEM or a key that does not match its certificate is found now, not at the first client
    } catch (err) {
      throw new ConfigError(`the TLS certificates in ${s.certificates} cannot be used: ${(err as Error).message}`);
    }
    return new NbdTls(s.mode, options, undefined);
  }

  /**
   * Starts TLS as the server on `socket`, whose STARTTLS was just acknowledged; calls `done` once
   * with the secured socket, or with the reason the handshake failed (the socket is then gone).
   */
  upgrade(socket: net.Socket, done: (err: Error | null, peer?: TlsPeer) => void): void {
    let identity: string | undefined;
    let unknownIdentity: string | undefined;
    const keys = this.keys;
    const options: tls.TlsOptions = {
      ...this.options,
      ...(keys && {
        pskCallback: (_socket: tls.TLSSocket, id: string) => {
          const key = keys.get(id);
          if (key) identity = id;
          else unknownIdentity = id;
          return key ?? null;
        },
      }),
    };
    acceptTls(options, socket, (err, t) => {
      if (err) return done(new Error(failureReason(err, t, identity, unknownIdentity)));
      done(null, { socket: t, protocol: t.getProtocol(), cipher: t.getCipher().name, identity });
    });
  }
}

/** Why a TLS handshake failed, in words an operator can act on. */
function failureReason(err: Error, t: tls.TLSSocket, identity: string | undefined, unknownIdentity: string | undefined): string {
  // OpenSSL's reason ("peer did not return a certificate"), without its file and line.
  const openssl = (err as { reason?: string }).reason ?? err.message;
  if (unknownIdentity !== undefined) return `PSK identity "${unknownIdentity}" is not in the key file`;
  // TLS 1.3 says "binder does not verify", TLS 1.2 "decryption failed or bad record mac".
  if (identity !== undefined) return `PSK identity "${identity}" is known, but the handshake failed: ${openssl} (a client with another key fails so)`;
  // A refused client certificate only says "socket hang up" in `err`; why is on the socket.
  if (t.authorizationError) return `client certificate refused: ${String(t.authorizationError)}`;
  return openssl;
}
