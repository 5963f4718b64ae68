// A node started on a replaced, empty disk (a brand-new copy) while its peer is down, with a
// witness: regression brand-new-copy-alone, found by the protocol model (model/replication.pml,
// MUTANT_BRAND_NEW_ALONE): the witness granted it, it served its empty disk and wrote alone,
// turning UpToDate, and every write its peer held was gone from the client's view. Now the
// witness, which knows the cluster holds data, refuses it: no reads, no writes, until its peer
// is back and it has synced from it. The migration case is kept: the first node of a new
// cluster, alone and empty, is granted, filled, and its peer joins later.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fetchStatus } from '../../src/admin/admin-client.js';
import { dataFile, pairInSync, pairPorts, until, volumeStatus, witnessGrants, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { freePort, startClusterNode, startWitnessProcess, type RunningServer } from '../support/processes.js';

const MiB = 1024 * 1024;
const REFUSED = /witness refused: a brand-new copy cannot serve alone: this cluster holds data on its peer/;

describe('a node on a replaced, empty disk, with a witness', () => {
  const procs: RunningServer[] = [];
  const dirs: string[] = [];
  afterAll(async () => {
    for (const r of procs) await r.stop('SIGKILL');
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  /** A pair config with a witness in a new folder; the witness started. */
  async function setUp(name: string) {
    const dir = mkdtempSync(join(tmpdir(), `nbd-mirror-${name}-`));
    dirs.push(dir);
    const p = await pairPorts();
    const witnessPort = await freePort();
    const state = join(dir, 'witness.json');
    procs.push(await startWitnessProcess(state, [], witnessPort));
    const config = writePairConfig(join(dir, 'cluster.json'), p, '16M', p.peerB, { witness: `127.0.0.1:${witnessPort}`, quorum: { onNoQuorum: 'io-error' }, link: { timeout: 1000 } });
    const start = async (node: 'a' | 'b') => {
      const r = await startClusterNode(config, node);
      procs.push(r);
      return r;
    };
    return { dir, p, witnessPort, state, start };
  }

  it('regression brand-new-copy-alone: refuses reads and writes while its peer is down, then full-syncs from it', async () => {
    const { dir, p, witnessPort, state, start } = await setUp('brand-new-alone');
    const a = await start('a');
    let b = await start('b');
    await until(() => pairInSync(p), 30_000);
    // Data written through both nodes.
    const ca = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    await ca.write(0, Buffer.alloc(MiB, 0xa1));
    await ca.flush();
    ca.close();
    const cb = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    await cb.write(5 * MiB, Buffer.alloc(MiB, 0xb2));
    await cb.flush();
    cb.close();
    const written = readFileSync(dataFile(dir, 'a'));

    // a fails (b takes the grant), then b; b's disk is replaced by an empty one.
    await a.stop('SIGKILL');
    await until(async () => (await witnessGrants(witnessPort))['a+b']?.holder === 'b');
    await b.stop('SIGKILL');
    rmSync(join(dir, 'b'), { recursive: true, force: true });
    const stateBefore = readFileSync(state, 'utf8');

    // b alone on its new disk: the witness refuses it, although b holds the grant.
    b = await start('b');
    await until(async () => (await fetchStatus({ host: '127.0.0.1', port: p.adminB })).quorum.state === 'denied', 15_000);
    const status = await fetchStatus({ host: '127.0.0.1', port: p.adminB });
    expect(status.quorum.reason).toMatch(REFUSED);
    expect(status.volumes.vol0).toMatchObject({ quorum: 'denied', disk: 'Inconsistent' });
    const client = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    await expect(client.read(0, 4096)).rejects.toThrow();
    await expect(client.write(MiB, Buffer.alloc(4096, 0xee))).rejects.toThrow();
    client.close();
    expect(readFileSync(state, 'utf8')).toBe(stateBefore); // the witness changed nothing
    expect(b.logs.filter((l) => l.msg === 'quorum: denied')).toHaveLength(1);
    expect(b.logs.find((l) => l.msg === 'quorum: denied')?.reason).toMatch(REFUSED);

    // a is back: b gets a full copy and serves it; the grant goes back at the first in-sync.
    await start('a');
    await until(async () => (await pairInSync(p)) && (await volumeStatus(p.adminB)).resyncedBytesTotal > 0, 30_000);
    expect((await volumeStatus(p.adminB)).resyncedBytesTotal).toBe(16 * MiB);
    const after = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    expect((await after.read(0, MiB)).equals(Buffer.alloc(MiB, 0xa1))).toBe(true);
    expect((await after.read(5 * MiB, MiB)).equals(Buffer.alloc(MiB, 0xb2))).toBe(true);
    await after.flush();
    after.close();
    expect(readFileSync(dataFile(dir, 'b')).equals(written)).toBe(true);
    expect(readFileSync(dataFile(dir, 'a')).equals(written)).toBe(true);
    await until(async () => (await witnessGrants(witnessPort))['a+b'] === undefined);
  }, 120_000);

  it('a new cluster: its first node, alone and empty, is granted and written; its peer joins later and gets a full copy', async () => {
    const { dir, p, witnessPort, start } = await setUp('new-cluster-alone');
    await start('a');
    await until(async () => (await volumeStatus(p.adminA)).quorum === 'alone', 15_000);
    expect((await witnessGrants(witnessPort))['a+b']?.holder).toBe('a');
    const ca = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    await ca.write(3 * MiB, Buffer.alloc(MiB, 0x3c));
    await ca.flush();
    await start('b');
    await until(async () => (await pairInSync(p)) && (await volumeStatus(p.adminB)).resyncedBytesTotal > 0, 30_000);
    expect((await volumeStatus(p.adminB)).resyncedBytesTotal).toBe(16 * MiB);
    await ca.flush();
    ca.close();
    const cb = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    expect((await cb.read(3 * MiB, MiB)).equals(Buffer.alloc(MiB, 0x3c))).toBe(true);
    cb.close();
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
  }, 120_000);
});
