// Real processes with a witness; the harness sits a proxy on every link (a↔b, a↔witness,
// b↔witness) and cuts them: a cut peer link lets exactly one node write (the other holds its
// requests, reads too; once healed its held reads see the new data and its held writes fail,
// since their client may have written the same blocks elsewhere meanwhile); a lost witness alone changes
// nothing; peer and witness both lost stop writes as `quorum.onNoQuorum: suspend` says; a node
// stopped gracefully lets its peer write alone without the witness. The nodes sign their witness
// requests with the cluster secret, and the witness serves only signed ones (--secrets).
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fetchStatus } from '../../src/admin/admin-client.js';
import { dataFile, pairPorts, until, volumeStatus, witnessGrants, writePairConfig } from '../support/cluster.js';
import { run } from '../support/fixture.js';
import { NbdClient, NbdReplyError } from '../support/nbd-client.js';
import { cliPath, freePort, startClusterNode, startWitnessProcess, type RunningServer } from '../support/processes.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import { keygen } from '../../src/security/keygen.js';

const MiB = 2 ** 20;
const SUSPEND_MS = 4000;

/** Tracks a promise's outcome without awaiting it. */
function watch<T>(p: Promise<T>): { settled: boolean; value?: T; error?: unknown; done: Promise<void> } {
  const w: { settled: boolean; value?: T; error?: unknown; done: Promise<void> } = { settled: false, done: Promise.resolve() };
  w.done = p.then(
    (v) => void Object.assign(w, { settled: true, value: v }),
    (e: unknown) => void Object.assign(w, { settled: true, error: e }),
  );
  return w;
}

describe('witness quorum: partitions and graceful leave', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-witness-'));
  const procs: RunningServer[] = [];
  const proxies: TcpProxy[] = [];
  const clients: NbdClient[] = [];
  afterAll(async () => {
    for (const c of clients) c.close();
    for (const r of procs) await r.stop('SIGKILL');
    for (const p of proxies) await p.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a cut link lets exactly one node write; witness loss alone changes nothing; losing both suspends writes; a graceful stop needs no witness', async () => {
    const p = await pairPorts();
    const keys = keygen(dir, 'refuse');
    mkdirSync(join(dir, 'secrets'));
    copyFileSync(keys.clusterSecret, join(dir, 'secrets', 'ward-7.secret'));
    const witness = await startWitnessProcess(join(dir, 'witness.json'), ['--secrets', join(dir, 'secrets')]);
    procs.push(witness);
    const proxy = (port: number) => {
      const x = new TcpProxy({ host: '127.0.0.1', port });
      proxies.push(x);
      return x.start().then(() => x);
    };
    const [link, toWitnessA, toWitnessB] = await Promise.all([proxy(p.peerB), proxy(witness.port), proxy(witness.port)]);
    // A named cluster: the witness keys its grant by the name (default: the node names, "a+b").
    const extra = (w: TcpProxy) => ({ name: 'ward-7', witness: `127.0.0.1:${w.port}`, quorum: { onNoQuorum: 'suspend', suspendTimeout: SUSPEND_MS }, security: { clusterSecret: 'cluster.secret' } });
    const aConfig = writePairConfig(join(dir, 'a.json'), p, '16M', link.port, extra(toWitnessA));
    const bConfig = writePairConfig(join(dir, 'b.json'), p, '16M', p.peerB, extra(toWitnessB));
    const a = await startClusterNode(aConfig, 'a');
    let b = await startClusterNode(bConfig, 'b');
    procs.push(a, b);
    const admin = { a: p.adminA, b: p.adminB };
    const both = async (f: (s: Awaited<ReturnType<typeof volumeStatus>>) => boolean) => f(await volumeStatus(p.adminA)) && f(await volumeStatus(p.adminB));
    const inSync = (s: Awaited<ReturnType<typeof volumeStatus>>) => s.connection === 'Connected' && s.disk === 'UpToDate' && s.outOfSyncBytes === 0 && s.resync === null;
    const identical = () => readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')));
    await until(() => both(inSync));
    const connect = async (port: number) => {
      const c = await NbdClient.connect({ port, exportName: 'vol0' });
      clients.push(c);
      return c;
    };
    const client = { a: await connect(p.nbdA), b: await connect(p.nbdB) };
    await client.a.write(0, Buffer.alloc(MiB, 0x11));

    // 1. Peer link cut, both see the witness: exactly one is granted, the other is denied.
    link.cut();
    await until(async () => {
      const q = [(await volumeStatus(p.adminA)).quorum, (await volumeStatus(p.adminB)).quorum].sort();
      return q[0] === 'alone' && q[1] === 'denied';
    });
    const winner = (await volumeStatus(p.adminA)).quorum === 'alone' ? 'a' : 'b';
    const loser = winner === 'a' ? 'b' : 'a';
    expect(await witnessGrants(witness.port)).toEqual({ 'ward-7': expect.objectContaining({ holder: winner }) });
    // Status says who may write and why, in JSON and in words.
    const q = (await fetchStatus({ host: '127.0.0.1', port: admin[loser] })).quorum;
    expect(q).toMatchObject({ state: 'denied', witness: true, grantHeld: false });
    expect(q.reason).toMatch(new RegExp(`witness refused: node ${winner} has written alone`));
    expect(await run(process.execPath, [cliPath, 'status', '--admin', `127.0.0.1:${admin[winner]}`])).toMatch(/quorum alone \(holds the witness grant\): witness granted writing alone/);
    const fresh = Buffer.alloc(MiB, 0x22);
    await client[winner].write(2 * MiB, fresh);
    // The denied node holds writes and reads: its copy is older than the winner's.
    const heldWrite = watch(client[loser].write(4 * MiB, Buffer.alloc(MiB, 0x33)));
    const heldRead = watch(client[loser].read(2 * MiB, MiB));
    await new Promise((r) => setTimeout(r, 1000)); // nothing to poll: showing that nothing happens
    expect({ write: heldWrite.settled, read: heldRead.settled, writeErr: String(heldWrite.error), readErr: String(heldRead.error) }).toEqual({ write: false, read: false, writeErr: "undefined", readErr: "undefined" });
    expect((await volumeStatus(admin[loser])).quorum).toBe('denied');

    // 2. Heal: resync from the winner; the held read sees the new data, the held write fails
    // with EIO (applied this late it could overwrite what its client wrote through the winner).
    link.restore();
    await Promise.all([heldWrite.done, heldRead.done]);
    expect((heldWrite.error as NbdReplyError).errno).toBe(5);
    expect(heldRead.error).toBeUndefined();
    expect(heldRead.value!.equals(fresh)).toBe(true);
    await until(() => both(inSync));
    await until(async () => Object.keys(await witnessGrants(witness.port)).length === 0); // given back once in sync
    expect(witness.logs.filter((l) => l.msg === 'witness request refused')).toEqual([]); // every signed request passed
    await Promise.all([client.a.flush(), client.b.flush()]);
    expect(identical()).toBe(true);

    // 3. Witness lost alone: nothing changes, writes on both nodes are mirrored.
    toWitnessA.cut();
    toWitnessB.cut();
    await client.a.write(6 * MiB, Buffer.alloc(MiB, 0x44));
    await client.b.write(7 * MiB, Buffer.alloc(MiB, 0x55));
    expect(await both((s) => s.connection === 'Connected' && s.quorum === 'connected' && s.outOfSyncBytes === 0)).toBe(true);

    // 4. Peer and witness lost: neither node may write; suspend holds writes, then EIO; reads go on.
    link.cut();
    await until(() => both((s) => s.quorum === 'no-quorum'));
    expect((await client.a.read(6 * MiB, MiB)).equals(Buffer.alloc(MiB, 0x44))).toBe(true);
    const started = Date.now();
    const suspended = [watch(client.a.write(8 * MiB, Buffer.alloc(4096, 0x66))), watch(client.b.write(9 * MiB, Buffer.alloc(4096, 0x77)))];
    await new Promise((r) => setTimeout(r, 1000));
    expect(suspended.some((w) => w.settled)).toBe(false);
    await Promise.all(suspended.map((w) => w.done));
    const waited = Date.now() - started;
    for (const w of suspended) expect((w.error as NbdReplyError).errno).toBe(5); // EIO
    expect(waited).toBeGreaterThanOrEqual(SUSPEND_MS - 500);
    console.log(`no quorum: writes held ${waited} ms, then EIO (suspendTimeout ${SUSPEND_MS} ms)`);

    // Everything back: connected again, writes go on, copies identical.
    link.restore();
    toWitnessA.restore();
    toWitnessB.restore();
    await until(() => both(inSync));
    await client.a.write(10 * MiB, Buffer.alloc(MiB, 0x88));
    await Promise.all([client.a.flush(), client.b.flush()]);
    expect(identical()).toBe(true);

    // 5. Graceful leave with the witness gone: `nbd-mirror stop` on b, a goes on writing alone.
    await witness.stop('SIGKILL');
    client.b.close();
    const said = await run(process.execPath, [cliPath, 'stop', '--config', bConfig, '--node', 'b']);
    expect(said).toMatch(/node b is stopping/);
    expect(b.proc.exitCode ?? (await new Promise((r) => b.proc.once('exit', r)))).toBe(0);
    await until(async () => (await volumeStatus(p.adminA)).quorum === 'alone');
    await client.a.write(12 * MiB, Buffer.alloc(MiB, 0x99));
    expect((await volumeStatus(p.adminA)).outOfSyncBytes).toBe(MiB);
    b = await startClusterNode(bConfig, 'b');
    procs.push(b);
    await until(() => both(inSync));
    await client.a.flush();
    expect(identical()).toBe(true);
  });

  it('with onNoQuorum io-error, a node without peer and witness fails writes at once and still reads', async () => {
    const p = await pairPorts();
    const sub = join(dir, 'io-error');
    mkdirSync(sub);
    const link = new TcpProxy({ host: '127.0.0.1', port: p.peerB });
    proxies.push(link);
    await link.start();
    // The witness address answers nothing: nobody listens there.
    const extra = { witness: `127.0.0.1:${await freePort()}`, quorum: { onNoQuorum: 'io-error' } };
    procs.push(await startClusterNode(writePairConfig(join(sub, 'a.json'), p, '16M', link.port, extra), 'a'));
    procs.push(await startClusterNode(writePairConfig(join(sub, 'b.json'), p, '16M', p.peerB, extra), 'b'));
    await until(async () => (await volumeStatus(p.adminA)).connection === 'Connected' && (await volumeStatus(p.adminB)).disk === 'UpToDate');
    const client = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    clients.push(client);
    await client.write(0, Buffer.alloc(4096, 0x42));
    link.cut();
    await until(async () => (await volumeStatus(p.adminA)).quorum === 'no-quorum');
    const started = Date.now();
    await expect(client.write(8192, Buffer.alloc(4096, 0x43))).rejects.toMatchObject({ errno: 5 });
    expect(Date.now() - started).toBeLessThan(1000); // not held
    expect((await client.read(0, 4096)).every((x) => x === 0x42)).toBe(true);
  });
});
