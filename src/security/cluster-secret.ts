// The cluster secret: 32 random bytes as 64 hex digits in a file of its own (`nbd-mirror keygen`
// writes it, mode 0600), named by `security.clusterSecret` in the cluster config. Every key the
// nodes share comes from it, each through its own derivation (see peer-tls.ts), so a key one
// protocol leaks unlocks no other.
import { readFileSync, statSync } from 'node:fs';
import { ConfigError } from '../config/cluster.js';

export const CLUSTER_SECRET_BYTES = 32;

/**
 * Reads and checks the secret file. Refused, like ssh refuses a private key, when the group or
 * others may read it: a secret every local user can read authenticates nobody.
 */
export function readClusterSecret(path: string): Buffer {
  let text: string;
  let mode: number;
  try {
    mode = statSync(path).mode;
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read the cluster secret ${path}: ${(err as Error).message}`);
  }
  if ((mode & 0o077) !== 0) throw new ConfigError(`the cluster secret ${path} is readable by others (mode ${(mode & 0o777).toString(8)}): chmod 600 it`);
  const hex = text.trim();
  if (!new RegExp(`^[0-9a-fA-F]{${2 * CLUSTER_SECRET_BYTES}}$`).test(hex)) {
    throw new ConfigError(`the cluster secret ${path} must hold ${2 * CLUSTER_SECRET_BYTES} hex digits (${CLUSTER_SECRET_BYTES} random bytes; nbd-mirror keygen writes one)`);
  }
  return Buffer.from(hex, 'hex');
}
