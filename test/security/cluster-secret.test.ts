import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseClusterConfig } from '../../src/config/cluster.js';
import { peerLinkKey } from '../../src/replication/peer-tls.js';
import { readKeyFile } from '../../src/security/key-file.js';

const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-secret-'));
const hex = 'a1'.repeat(32);
const file = (name: string, text: string, mode = 0o600) => {
  const path = join(dir, name);
  writeFileSync(path, text, { mode });
  chmodSync(path, mode); // the umask may have taken bits away; the test wants exactly these
  return path;
};

describe('cluster secret', () => {
  it('reads 64 hex digits (a newline after them is fine) from a file only its owner can read', () => {
    expect(readKeyFile(file('ok', `${hex}\n`), 'security.clusterSecret')).toEqual(Buffer.from(hex, 'hex'));
  });

  it('refuses a file others can read, a short or non-hex secret, and a missing file, naming the file', () => {
    const read = (path: string) => readKeyFile(path, 'security.clusterSecret');
    expect(() => read(file('open', hex, 0o644))).toThrow(/open is readable by others \(mode 644\): chmod 600/);
    expect(() => read(file('short', 'a1'.repeat(16)))).toThrow(/short is not 32 bytes as 64 hex digits/);
    expect(() => read(file('words', 'correct horse battery staple'.padEnd(64, 'x')))).toThrow(/is not 32 bytes as 64 hex digits/);
    expect(() => read(join(dir, 'missing'))).toThrow(/cannot read security\.clusterSecret .*missing/);
  });

  it('derives the peer-link key: one per secret, never the secret itself', () => {
    const secret = Buffer.from(hex, 'hex');
    expect(peerLinkKey(secret)).toHaveLength(32);
    expect(peerLinkKey(secret)).toEqual(peerLinkKey(Buffer.from(hex, 'hex')));
    expect(peerLinkKey(secret).equals(secret)).toBe(false);
    expect(peerLinkKey(secret).equals(peerLinkKey(Buffer.alloc(32)))).toBe(false);
  });

  it('is named by security.clusterSecret in the cluster config; absent, the link is plain', () => {
    const nodes = {
      a: { nbd: '127.0.0.1:10809', peer: '127.0.0.1:7789', admin: '127.0.0.1:9180', dataDir: 'a' },
      b: { nbd: '127.0.0.1:10810', peer: '127.0.0.1:7790', admin: '127.0.0.1:9181', dataDir: 'b' },
    };
    const base = { nodes, volumes: { vol0: { size: '1G' } } };
    expect(parseClusterConfig(base).security.clusterSecret).toBeUndefined();
    expect(parseClusterConfig({ ...base, security: { clusterSecret: 'cluster.secret' } }).security.clusterSecret).toBe('cluster.secret');
    expect(() => parseClusterConfig({ ...base, security: { clusterSecret: '' } })).toThrow(/security\.clusterSecret/);
    expect(() => parseClusterConfig({ ...base, security: { secret: 'x' } })).toThrow(/security/);
  });
});
