// `nbd-mirror keygen --dir DIR`: the keys of one cluster, as files in DIR — `admin.token` (the
// admin endpoint's bearer token) and `cluster.secret` (what the witness checks the nodes' requests
// with; the peer link's TLS-PSK key too). Format: key-file.ts. With --ca, keygen-ca.ts adds a CA
// and the nodes' certificates.
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeKeyFile } from './key-file.js';

export const ADMIN_TOKEN_FILE = 'admin.token';
export const CLUSTER_SECRET_FILE = 'cluster.secret';

/** A client's name becomes a folder name and its certificate's CN: no path separators, no dot first. */
const CLIENT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Why `name` cannot name a host's client certificate (keygen --client), or undefined. */
export function clientNameRefusal(name: string): string | undefined {
  return CLIENT_NAME.test(name) ? undefined : `client name "${name}": 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit`;
}

/** What to do with a key file that is there already: refuse (write nothing), keep it, or replace it. */
export type ExistingKeys = 'refuse' | 'keep' | 'replace';

export interface KeyFiles {
  adminToken: string;
  clusterSecret: string;
  /** The files written this time (with `keep`, those that were missing). */
  written: string[];
}

/** `alsoWritten`: files the caller writes next (the CA's, keygen-ca.ts), checked with these before any is written. */
export function keygen(dir: string, existing: ExistingKeys, alsoWritten: readonly string[] = []): KeyFiles {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files = { adminToken: join(dir, ADMIN_TOKEN_FILE), clusterSecret: join(dir, CLUSTER_SECRET_FILE) };
  const present = [...Object.values(files), ...alsoWritten].filter((f) => existsSync(f));
  // Checked for all before any is written: a refusal leaves the folder as it was.
  if (existing === 'refuse' && present.length > 0) {
    throw new Error(`${present.join(present.length > 2 ? ', ' : ' and ')} exist${present.length === 1 ? 's' : ''}: keygen does not overwrite keys the nodes and the witness may be using (--force replaces them)`);
  }
  const written: string[] = [];
  for (const f of Object.values(files)) {
    if (existing === 'keep' && present.includes(f)) continue;
    writeKeyFile(f, existing === 'replace');
    written.push(f);
  }
  return { ...files, written };
}
