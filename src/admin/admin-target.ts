// Which admin endpoint a command talks to, and with which token: `--config FILE --node NAME`
// (the node's `admin` address and the config's `security.adminToken`), or `--admin HOST:PORT`
// with an optional `--token-file FILE`.
import { dirname, resolve } from 'node:path';
import { loadClusterConfig } from '../config/cluster.js';
import type { HostPort } from '../config/units.js';
import { readClusterKey } from '../security/cluster-keys.js';
import { readKeyFile } from '../security/key-file.js';
import type { AdminTarget } from './admin-client.js';

export interface AdminTargetOptions {
  admin?: HostPort;
  tokenFile?: string;
  config?: string;
  node?: string;
}

export function adminTarget(o: AdminTargetOptions): AdminTarget {
  if (o.config === undefined) {
    if (o.node !== undefined) throw new Error('--node goes with --config');
    if (o.admin === undefined) throw new Error('give --admin HOST:PORT, or --config FILE --node NAME');
    return { addr: o.admin, token: o.tokenFile === undefined ? undefined : readKeyFile(resolve(o.tokenFile), '--token-file').toString('hex') };
  }
  if (o.node === undefined) throw new Error('--config needs --node NAME: which node to ask');
  const config = loadClusterConfig(o.config);
  const node = config.nodes[o.node];
  if (!node) throw new Error(`node "${o.node}" is not in ${o.config} (nodes: ${Object.keys(config.nodes).join(', ')})`);
  return { addr: reachable(node.admin), token: readClusterKey(config, dirname(resolve(o.config)), 'adminToken')?.toString('hex') };
}

/** A wildcard listen address is reached through this machine's loopback. */
export function reachable(a: HostPort): HostPort {
  if (a.host === '0.0.0.0') return { ...a, host: '127.0.0.1' };
  if (a.host === '::') return { ...a, host: '::1' };
  return a;
}
