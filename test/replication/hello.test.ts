import { describe, expect, it } from 'vitest';
import { ProtocolViolation } from '../../src/protocol/errors.js';
import { decodeHello, encodeHello, helloMismatch, type Hello } from '../../src/replication/hello.js';
import { PEER_VERSION } from '../../src/replication/peer-protocol.js';

const gen = { current: '0123456789abcdef', bitmap: '0000000000000000', history: ['0000000000000000', '0000000000000000'] as [string, string] };
const a: Hello = { version: PEER_VERSION, cluster: 'hospital', node: 'a', boot: '00112233aabbccdd', volumes: [{ name: 'vol0', size: 2 ** 30, generation: gen, state: 'UpToDate' as const, dirty: false, checksum: false, dirtyBytes: 0, trackingSince: 0 }] };
const b: Hello = { ...a, node: 'b' };

describe('peer HELLO', () => {
  it('round-trips', () => {
    expect(decodeHello(encodeHello(a))).toEqual(a);
    const unfinished = { op: 'resize' as const, name: 'vol0', size: 2 ** 31, force: false };
    expect(decodeHello(encodeHello({ ...a, unfinished }))).toEqual({ ...a, unfinished });
  });

  it('refuses malformed, unknown-version and extra-field HELLOs, naming the field', () => {
    expect(() => decodeHello(Buffer.from('{not json'))).toThrow(/not JSON/);
    expect(() => decodeHello(encodeHello({ ...a, version: 1 }))).toThrow(/version 1/);
    expect(() => decodeHello(Buffer.from(JSON.stringify({ ...a, boot: undefined })))).toThrow(/boot/);
    expect(() => decodeHello(Buffer.from(JSON.stringify({ ...a, volumes: [{ ...a.volumes[0], size: -1 }] })))).toThrow(/volumes\.0\.size/);
    expect(() => decodeHello(Buffer.from(JSON.stringify({ ...a, extra: 1 })))).toThrow(ProtocolViolation);
    // The unfinished change a HELLO may name is checked like a VOLUME_OP.
    for (const unfinished of [{ op: 'delete', name: '../x' }, { op: 'create', name: 'x', size: 4096 }, { op: 'resize', name: 'x', size: 4097 }, 'x', { op: 'delete', name: 'x', extra: 1 }]) {
      expect(() => decodeHello(Buffer.from(JSON.stringify({ ...a, unfinished }))), JSON.stringify(unfinished)).toThrow(/peer HELLO invalid: unfinished/);
    }
  });

  it('tells why two nodes must not link: other cluster, same name, volume set or size differs', () => {
    expect(helloMismatch(a, b)).toBeUndefined();
    expect(helloMismatch(a, { ...b, cluster: 'other' })).toMatch(/cluster "other"/);
    expect(helloMismatch(a, { ...a })).toMatch(/own node name/);
    expect(helloMismatch(a, { ...b, volumes: [{ ...a.volumes[0]!, size: 2 ** 31 }] })).toMatch(/2147483648 bytes on the peer/);
    expect(helloMismatch(a, { ...b, volumes: [{ ...a.volumes[0]!, name: 'vol9' }] })).toMatch(/"vol9"/);
    expect(helloMismatch(a, { ...b, volumes: [] })).toMatch(/lacks/);
  });

  it('matches volumes by position: a repeated name cannot stand in for a missing one', () => {
    const two = { ...a, volumes: [a.volumes[0]!, { ...a.volumes[0]!, name: 'vol1' }] };
    expect(helloMismatch(two, { ...two, node: 'b' })).toBeUndefined();
    expect(helloMismatch(two, { ...two, node: 'b', volumes: [two.volumes[1]!, two.volumes[0]!] })).toMatch(/lists volume "vol1" where we have "vol0"/);
  });
});
