// The pre-shared key file that gnutls' `psktool` writes and nbdkit and qemu read: one
// `username:hexkey` line per client. Read once at start; a bad line is a config error naming it.
import { readFileSync } from 'node:fs';
import { ConfigError } from '../config/cluster.js';

/** Identity → key. An identity that is not here is refused. */
export type PskKeys = ReadonlyMap<string, Buffer>;

/** Longest key TLS can use (OpenSSL's PSK_MAX_PSK_LEN); psktool writes 32 bytes. */
const MAX_KEY_BYTES = 512;

export function loadPskFile(path: string): PskKeys {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read the TLS PSK file ${path}: ${(err as Error).message}`);
  }
  return parsePskFile(text, path);
}

export function parsePskFile(text: string, source: string): PskKeys {
  const keys = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    if (line.trim() === '') continue;
    const where = `${source} line ${i + 1}`;
    const colon = line.indexOf(':'); // the first, as gnutls splits it
    const user = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !/^(?:[0-9a-fA-F]{2})+$/.test(hex) || hex.length / 2 > MAX_KEY_BYTES) {
      throw new ConfigError(`${where} is not "username:hexkey" (as psktool -u USER -p FILE writes it)`);
    }
    if (keys.has(user)) throw new ConfigError(`${where}: user "${user}" is already in the file`);
    keys.set(user, Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) throw new ConfigError(`${source} has no keys (make one with psktool -u USER -p ${source})`);
  return keys;
}
