// NBD over TLS, client side: how `nbd-mirror attach` secures its connections to nodes whose
// `nodes.N.tls.mode` is `on` or `require`. The credentials are the ones libnbd and qemu take: a
// psktool key file and the username to use from it, or a certificates directory with
// ca-cert.pem (the CA that signed the nodes' certificates) and, for nodes that verify clients,
// client-cert.pem and client-key.pem. The connection upgrades after STARTTLS (node-connection.ts).
import net from 'node:net';
import tls from 'node:tls';
import { ConfigError } from '../config/cluster.js';
import { PSK_CIPHERS, readCertificateFile } from './nbd-tls.js';
import { loadPskFile } from './psk-file.js';

export interface NbdTlsClientSettings {
  /** psktool's `username:hexkey` file (the same file the nodes have, or one with this host's line). */
  readonly psk?: string;
  /** With `psk`: the username whose key is used. */
  readonly username?: string;
  /** Directory with ca-cert.pem, and client-cert.pem + client-key.pem when nodes verify clients. */
  readonly certificates?: string;
}

export class NbdTlsClient {
  private constructor(private readonly options: tls.ConnectionOptions) {}

  /** Reads and checks the files the settings name (paths already absolute). */
  static load(s: NbdTlsClientSettings): NbdTlsClient {
    if ((s.psk === undefined) === (s.certificates === undefined)) throw new ConfigError('attach.tls: give "psk" (with "username") or "certificates", one of them');
    if (s.psk !== undefined) {
      const keys = loadPskFile(s.psk);
      const username = s.username ?? (keys.size === 1 ? [...keys.keys()][0]! : undefined);
      if (username === undefined) throw new ConfigError(`attach.tls.username: ${s.psk} has ${keys.size} keys: say which one attach uses`);
      const key = keys.get(username);
      if (!key) throw new ConfigError(`attach.tls.username: "${username}" is not in ${s.psk}`);
      return new NbdTlsClient({ ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2', pskCallback: () => ({ psk: key, identity: username }), checkServerIdentity: () => undefined });
    }
    const read = (name: string, optional: boolean) => readCertificateFile(s.certificates!, name, optional);
    return new NbdTlsClient({ ca: read('ca-cert.pem', false), cert: read('client-cert.pem', true), key: read('client-key.pem', true), minVersion: 'TLSv1.2' });
  }

  /** Starts TLS as the client on `socket` (STARTTLS acknowledged); `host` is checked against the node's certificate. */
  upgrade(socket: net.Socket, host: string): Promise<tls.TLSSocket> {
    return new Promise((resolve, reject) => {
      const t = tls.connect({ ...this.options, socket, servername: net.isIP(host) === 0 ? host : undefined, host });
      t.once('secureConnect', () => resolve(t));
      t.once('error', reject);
    });
  }
}
