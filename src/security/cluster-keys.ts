// The key files a cluster config names (`security.adminToken`, `security.clusterSecret`), read
// relative to the config file's folder as every path in it is.
import { resolve } from 'node:path';
import type { ClusterConfig } from '../config/cluster.js';
import { readKeyFile } from './key-file.js';

/** The key, or undefined when the config names none; throws when the file is missing or bad. */
export function readClusterKey(config: ClusterConfig, configDir: string, key: 'adminToken' | 'clusterSecret'): Buffer | undefined {
  const file = config.security[key];
  return file === undefined ? undefined : readKeyFile(resolve(configDir, file), `security.${key}`);
}
