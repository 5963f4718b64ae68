import { describe, expect, it } from 'vitest';
import { ProtocolViolation } from '../../src/protocol/errors.js';
import { decodeHello, encodeHello, helloMismatch, type Hello } from '../../src/replication/hello.js';

const gen = { current: '0123456789abcdef', bitmap: '0000000000000000', history: ['0000000000000000', '0000000000000000'] as [string, string] };
const a: Hello = { version: 1, cluster: 'hospital', node: 'a', volumes: [{ name: 'vol0', size: 2 ** 30, generation: gen, state: 'UpToDate' as const, dirty: false, checksum: false, dirtyBytes: 0, trackingSince: 0 }] };
const b: Hello = { ...a, node: 'b' };

describe('peer HELLO', () => {
  it('round-trips', () => {
    expect(decodeHello(encodeHello(a))).toEqual(a);
  });

  it('refuses malformed, unknown-version and extra-field HELLOs, naming the field', () => {
    expect(() => decodeHello(Buffer.from('{not json'))).toThrow(/not JSON/);
    expect(() => decodeHello(encodeHello({ ...a, version: 2 }))).toThrow(/version 2/);
    expect(() => decodeHello(Buffer.from(JSON.stringify({ ...a, volumes: [{ ...a.volumes[0], size: -1 }] })))).toThrow(/volumes\.0\.size/);
    expect(() => decodeHello(Buffer.from(JSON.stringify({ ...a, extra: 1 })))).toThrow(ProtocolViolation);
  });

  it('tells why two nodes must not link: other cluster, same name, volume set or size differs', () => {
    expect(helloMismatch(a, b)).toBeUndefined();
    expect(helloMismatch(a, { ...b, cluster: 'other' })).toMatch(/cluster "other"/);
    expect(helloMismatch(a, { ...a })).toMatch(/own node name/);
    expect(helloMismatch(a, { ...b, volumes: [{ ...a.volumes[0]!, size: 2 ** 31 }] })).toMatch(/2147483648 bytes on the peer/);
    expect(helloMismatch(a, { ...b, volumes: [{ ...a.volumes[0]!, name: 'vol9' }] })).toMatch(/"vol9"/);
    expect(helloMismatch(a, { ...b, volumes: [] })).toMatch(/lacks/);
  });
});
