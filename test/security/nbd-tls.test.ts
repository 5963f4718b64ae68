// Loading NBD TLS settings: every mistake an operator can make is a config error that says what to fix.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseClusterConfig } from '../../src/config/cluster.js';
import { NbdTls } from '../../src/security/nbd-tls.js';
import { parsePskFile } from '../../src/security/psk-file.js';

const KEY = '29d4692e0057c6934c2f1fb4249679c7b3a3b01540357aa1bbd35063336256a4';

describe('PSK file', () => {
  it('reads psktool lines, one identity each', () => {
    const keys = parsePskFile(`alice:${KEY}\n\nbob:00ff\r\n`, 'keys.psk');
    expect(keys.get('alice')!.toString('hex')).toBe(KEY);
    expect(keys.get('bob')).toEqual(Buffer.from([0, 0xff]));
    expect(keys.has('carol')).toBe(false);
  });

  it('names the bad line', () => {
    expect(() => parsePskFile(`alice:${KEY}\nbob\n`, 'keys.psk')).toThrow(/keys.psk line 2 is not "username:hexkey"/);
    expect(() => parsePskFile('alice:xyz', 'k')).toThrow(/k line 1/);
    expect(() => parsePskFile('alice:abc', 'k')).toThrow(/k line 1/); // odd number of hex digits
    expect(() => parsePskFile(':00ff', 'k')).toThrow(/k line 1/);
    expect(() => parsePskFile(`alice:${KEY}\nalice:00ff`, 'k')).toThrow(/k line 2: user "alice" is already in the file/);
    expect(() => parsePskFile('\n', 'k')).toThrow(/k has no keys/);
  });
});

describe('NbdTls.load', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-tls-unit-'));

  it('is nothing when off', () => {
    expect(NbdTls.load({ mode: 'off' })).toBeUndefined();
  });

  it('refuses settings that cannot work', () => {
    expect(() => NbdTls.load({ mode: 'on' })).toThrow(/needs a certificates directory or a PSK file/);
    expect(() => NbdTls.load({ mode: 'on', psk: 'k', certificates: dir })).toThrow(/not both/);
    expect(() => NbdTls.load({ mode: 'require', psk: 'k', verifyPeer: true })).toThrow(/verify-peer checks client certificates/);
  });

  it('says which file is missing or unusable', () => {
    expect(() => NbdTls.load({ mode: 'require', psk: join(dir, 'none.psk') })).toThrow(/cannot read the TLS PSK file .*none.psk/);
    expect(() => NbdTls.load({ mode: 'require', certificates: dir })).toThrow(/cannot read .*ca-cert.pem/);
    for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) writeFileSync(join(dir, f), 'not a PEM\n');
    expect(() => NbdTls.load({ mode: 'require', certificates: dir })).toThrow(/TLS certificates in .* cannot be used/);
  });

  it('loads a PSK file', () => {
    const file = join(dir, 'keys.psk');
    writeFileSync(file, `alice:${KEY}\n`);
    expect(NbdTls.load({ mode: 'require', psk: file })!.mode).toBe('require');
  });
});

describe('cluster config nodes.NAME.tls', () => {
  const nodes = {
    a: { nbd: '127.0.0.1:10809', peer: '127.0.0.1:7789', admin: '127.0.0.1:9180', dataDir: 'a', tls: { mode: 'require', psk: 'a.psk' } },
    b: { nbd: '127.0.0.1:10810', peer: '127.0.0.1:7790', admin: '127.0.0.1:9181', dataDir: 'b' },
  };

  it('is per node, off by default', () => {
    const c = parseClusterConfig({ nodes, volumes: { v: { size: '1M' } } });
    expect(c.nodes.a!.tls).toEqual({ mode: 'require', psk: 'a.psk', verifyPeer: false });
    expect(c.nodes.b!.tls).toEqual({ mode: 'off', verifyPeer: false });
  });

  it('refuses unknown modes and keys', () => {
    expect(() => parseClusterConfig({ nodes: { ...nodes, b: { ...nodes.b, tls: { mode: 'maybe' } } }, volumes: { v: { size: '1M' } } })).toThrow(/nodes\.b\.tls\.mode/);
    expect(() => parseClusterConfig({ nodes: { ...nodes, b: { ...nodes.b, tls: { pks: 'x' } } }, volumes: { v: { size: '1M' } } })).toThrow(/nodes\.b\.tls/);
  });
});
