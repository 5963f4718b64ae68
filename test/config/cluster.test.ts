import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadClusterConfig, parseClusterConfig } from '../../src/config/cluster.js';

const example = {
  nodes: {
    a: { nbd: '127.0.0.1:10809', peer: '127.0.0.1:7789', admin: '127.0.0.1:9180', dataDir: 'data/a' },
    b: { nbd: '127.0.0.1:10810', peer: '127.0.0.1:7790', admin: '127.0.0.1:9181', dataDir: 'data/b' },
  },
  volumes: { vol0: { size: '1G' } },
};

const c0 = () => parseClusterConfig(example);

describe('cluster config', () => {
  it('accepts the documented example and resolves sizes and addresses', () => {
    const c = parseClusterConfig(example);
    expect(c.volumes.vol0!.size).toBe(2 ** 30);
    expect(c.nodes.a!.peer).toEqual({ host: '127.0.0.1', port: 7789 });
    expect(c.witness).toBeUndefined();
    expect(c.name).toBeUndefined();
    expect(parseClusterConfig({ ...example, name: 'pair-1' }).name).toBe('pair-1');
    expect(() => parseClusterConfig({ ...example, name: 'two words' })).toThrow(/name: use 1-64 letters/);
    expect(c.link).toEqual({ timeoutMs: 2000, heartbeatMs: 500, ackTimeoutMs: 10_000 });
    expect(c.activityLog).toEqual({ extent: 4 * 2 ** 20, extents: 1000 });
  });

  it('takes a thin pool with its defaults and per-node overrides, and refuses odd units', () => {
    expect(c0().pool).toBeUndefined();
    const c = parseClusterConfig({ ...example, pool: { size: '100G' }, nodes: { ...example.nodes, b: { ...example.nodes.b, pool: { path: '/dev/md0', size: '120G' } } } });
    expect(c.pool).toEqual({ size: 100 * 2 ** 30, unit: 2 ** 20, onFull: 'error', holdTimeout: 30_000, thresholds: [75, 90] });
    expect(c.nodes.b!.pool).toEqual({ path: '/dev/md0', size: 120 * 2 ** 30 });
    expect(parseClusterConfig({ ...example, pool: { size: '1G', unit: '64K', onFull: 'queue', holdTimeout: '5s', thresholds: [50] } }).pool).toMatchObject({ unit: 65536, onFull: 'queue', holdTimeout: 5000, thresholds: [50] });
    expect(() => parseClusterConfig({ ...example, pool: { size: '1G', unit: '96K' } })).toThrow(/pool\.unit: must be a power of two from 64K to 64M/);
    expect(() => parseClusterConfig({ ...example, pool: { size: '1G', thresholds: [150] } })).toThrow(/pool\.thresholds/);
    expect(() => parseClusterConfig({ ...example, pool: {} })).toThrow(/pool\.size/);
    expect(() => parseClusterConfig({ ...example, nodes: { ...example.nodes, a: { ...example.nodes.a, pool: { size: '1G' } } } })).toThrow(/nodes\.a\.pool: a node pool override needs the cluster's "pool" section/);
  });

  it('takes the activity log size and refuses odd extents', () => {
    expect(parseClusterConfig({ ...example, activityLog: { extent: '1M', extents: 500 } }).activityLog).toEqual({ extent: 2 ** 20, extents: 500 });
    expect(() => parseClusterConfig({ ...example, activityLog: { extent: '3M' } })).toThrow(/activityLog\.extent: must be a power of two/);
    expect(() => parseClusterConfig({ ...example, activityLog: { extents: 5000 } })).toThrow(/activityLog\.extents/);
  });

  it('takes peer link timing as durations and checks heartbeat against timeout', () => {
    expect(parseClusterConfig({ ...example, link: { timeout: '5s' } }).link).toEqual({ timeoutMs: 5000, heartbeatMs: 1250, ackTimeoutMs: 25_000 });
    expect(parseClusterConfig({ ...example, link: { timeout: 800, heartbeat: '100ms', ackTimeout: '3s' } }).link).toEqual({ timeoutMs: 800, heartbeatMs: 100, ackTimeoutMs: 3000 });
    expect(() => parseClusterConfig({ ...example, link: { timeout: '1s', heartbeat: '900ms' } })).toThrow(/link\.heartbeat: heartbeat must be at most half/);
    expect(() => parseClusterConfig({ ...example, link: { timeout: '2s', ackTimeout: '1s' } })).toThrow(/link\.ackTimeout: ackTimeout must be at least timeout/);
    expect(() => parseClusterConfig({ ...example, link: { ackTimeout: 'soon' } })).toThrow(/link\.ackTimeout/);
    expect(() => parseClusterConfig({ ...example, link: { timeout: 'soon' } })).toThrow(/link\.timeout: "soon" is not a duration/);
  });

  it('takes the witness, the no-quorum policy and the split-brain policy', () => {
    const c = parseClusterConfig(example);
    expect(c.quorum).toEqual({ onNoQuorum: 'suspend', suspendTimeout: 30_000 });
    expect(c.splitBrain).toEqual({ policy: 'manual' });
    const w = parseClusterConfig({ ...example, witness: '127.0.0.1:7800', quorum: { onNoQuorum: 'io-error', suspendTimeout: '5s' }, splitBrain: { policy: 'discard-node', node: 'b' } });
    expect(w.witness).toEqual({ host: '127.0.0.1', port: 7800 });
    expect(w.quorum).toEqual({ onNoQuorum: 'io-error', suspendTimeout: 5000 });
    expect(w.splitBrain).toEqual({ policy: 'discard-node', node: 'b' });
    expect(() => parseClusterConfig({ ...example, witness: 'somewhere' })).toThrow(/witness:/);
    expect(() => parseClusterConfig({ ...example, quorum: { onNoQuorum: 'panic' } })).toThrow(/quorum\.onNoQuorum/);
    expect(() => parseClusterConfig({ ...example, splitBrain: { policy: 'discard-node', node: 'c' } })).toThrow(/splitBrain\.node: "c" is not a node/);
    expect(() => parseClusterConfig({ ...example, splitBrain: { policy: 'coin-toss' } })).toThrow(/splitBrain\.policy/);
  });

  it('names every bad field in one error', () => {
    const bad = structuredClone(example) as Record<string, any>;
    bad.nodes.a.nbd = 'nowhere';
    bad.volumes.vol0.size = '1.5Q';
    bad.extra = true;
    let err: unknown;
    try {
      parseClusterConfig(bad, 'cluster.json');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    expect(msg).toMatch(/cluster\.json/);
    expect(msg).toMatch(/nodes\.a\.nbd: "nowhere" is not HOST:PORT/);
    expect(msg).toMatch(/volumes\.vol0\.size/);
    expect(msg).toMatch(/extra/);
  });

  it('refuses two services on one address', () => {
    const dup = structuredClone(example);
    dup.nodes.b.peer = '127.0.0.1:7789';
    expect(() => parseClusterConfig(dup)).toThrow(/nodes\.b\.peer: 127\.0\.0\.1:7789 is also used by nodes\.a\.peer/);
    const sameNode = structuredClone(example);
    sameNode.nodes.a.admin = '127.0.0.1:10809';
    expect(() => parseClusterConfig(sameNode)).toThrow(/nodes\.a\.admin: 127\.0\.0\.1:10809 is also used by nodes\.a\.nbd/);
    const sameIp = structuredClone(example);
    sameIp.nodes.a.nbd = '10.0.0.5:10809';
    sameIp.nodes.b.nbd = '10.0.0.5:10809';
    expect(() => parseClusterConfig(sameIp)).toThrow(/nodes\.b\.nbd: 10\.0\.0\.5:10809 is also used by nodes\.a\.nbd/);
  });

  it('lets two servers each keep their admin endpoint on their own loopback (the README example)', () => {
    const c = parseClusterConfig({
      nodes: {
        a: { nbd: '10.0.0.1:10809', peer: '10.0.0.1:7789', admin: '127.0.0.1:9180', dataDir: '/srv/nbd-mirror' },
        b: { nbd: '10.0.0.2:10809', peer: '10.0.0.2:7789', admin: '127.0.0.1:9180', dataDir: '/srv/nbd-mirror' },
      },
      volumes: { vol0: { size: '1T' } },
    });
    expect(c.nodes.b!.admin).toEqual({ host: '127.0.0.1', port: 9180 });
  });

  it('insists on two nodes and 4 KiB-multiple sizes; volumes may all come online', () => {
    expect(() => parseClusterConfig({ ...example, nodes: { a: example.nodes.a } })).toThrow(/exactly two nodes/);
    expect(parseClusterConfig({ ...example, volumes: {} }).volumes).toEqual({});
    expect(parseClusterConfig({ ...example, volumes: undefined }).volumes).toEqual({});
    expect(() => parseClusterConfig({ ...example, volumes: { v: { size: 1000 } } })).toThrow(/multiple of 4096/);
  });

  it('reports unreadable files and broken JSON readably', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-cfg-'));
    expect(() => loadClusterConfig(join(dir, 'missing.json'))).toThrow(/cannot read/);
    writeFileSync(join(dir, 'broken.json'), '{ "nodes": ');
    expect(() => loadClusterConfig(join(dir, 'broken.json'))).toThrow(/not valid JSON/);
    writeFileSync(join(dir, 'ok.json'), JSON.stringify(example));
    expect(loadClusterConfig(join(dir, 'ok.json')).volumes.vol0!.size).toBe(2 ** 30);
  });

  it('keeps the admin endpoint on loopback unless security.adminPublic says otherwise, and then wants a token', () => {
    expect(parseClusterConfig(example).security).toEqual({ adminPublic: false });
    const onLan = (admin: string, security?: object) => ({ ...example, nodes: { ...example.nodes, b: { ...example.nodes.b, admin } }, ...(security ? { security } : {}) });
    for (const admin of ['10.0.0.2:9180', '0.0.0.0:9180', '[::]:9180', 'mgmt-b:9180']) {
      expect(() => parseClusterConfig(onLan(admin)), admin).toThrow(/nodes\.b\.admin: .* is not a loopback address: set "security": \{ "adminPublic": true, "adminToken": FILE \}/);
    }
    expect(() => parseClusterConfig(onLan('10.0.0.2:9180', { adminPublic: true }))).toThrow(/security\.adminPublic: a public admin endpoint needs security\.adminToken/);
    const c = parseClusterConfig(onLan('10.0.0.2:9180', { adminPublic: true, adminToken: 'keys/admin.token', clusterSecret: 'keys/cluster.secret' }));
    expect(c.security).toEqual({ adminPublic: true, adminToken: 'keys/admin.token', clusterSecret: 'keys/cluster.secret' });
    expect(parseClusterConfig(onLan('localhost:9181')).nodes.b!.admin.host).toBe('localhost');
    expect(() => parseClusterConfig({ ...example, security: { adminToken: '' } })).toThrow(/security\.adminToken/);
    expect(() => parseClusterConfig({ ...example, security: { token: 'x' } })).toThrow(/security/);
  });
});
