// Regression leave-while-holding-grant, found by the protocol model (model/replication.pml,
// LEAVING): a node still held the witness grant — it could not give it back when the pair got
// in sync again, the witness being down — and stopped gracefully. Its peer, told LEAVING, went on
// writing alone without asking; the leaver, restarted while its peer was away, found its grant
// at the witness and served its old copy: two nodes writing alone. Now a node gives its grant
// back before it says LEAVING; when it cannot, it says nothing and its peer asks the witness as
// after a failure.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { pairPorts, until, volumeStatus, witnessGrants, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { freePort, startClusterNode, startWitnessProcess, type RunningServer } from '../support/processes.js';

describe('a graceful stop of the node holding the witness grant', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-leave-grant-'));
  const procs: RunningServer[] = [];
  afterAll(async () => {
    for (const r of procs) await r.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('regression leave-while-holding-grant: a leaver that cannot give its grant back does not let its peer write alone', async () => {
    const p = await pairPorts();
    const witnessPort = await freePort();
    const state = join(dir, 'witness.json');
    const witness = await startWitnessProcess(state, [], witnessPort);
    procs.push(witness);
    const config = writePairConfig(join(dir, 'cluster.json'), p, '16M', p.peerB, { witness: `127.0.0.1:${witnessPort}`, quorum: { onNoQuorum: 'io-error' }, link: { timeout: 1000 } });
    const a = await startClusterNode(config, 'a');
    let b = await startClusterNode(config, 'b');
    procs.push(a, b);
    const inSync = async () => {
      const [x, y] = [await volumeStatus(p.adminA), await volumeStatus(p.adminB)];
      return [x, y].every((s) => s.connection === 'Connected' && s.disk === 'UpToDate' && s.outOfSyncBytes === 0 && s.resync === null);
    };
    await until(inSync);

    // b fails: a takes the grant and writes alone.
    await b.stop('SIGKILL');
    await until(async () => (await witnessGrants(witnessPort))['a+b']?.holder === 'a');
    const ca = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    await ca.write(0, Buffer.alloc(4096, 0x11));
    ca.close();
    // The witness goes down; b returns and the pair is in sync again, but a cannot give the grant back.
    await witness.stop('SIGKILL');
    b = await startClusterNode(config, 'b');
    procs.push(b);
    await until(inSync);

    // a stops gracefully, still holding the grant.
    expect(await a.stop('SIGTERM', 20_000)).toBe(0);
    expect(a.logs.some((l) => String(l.msg).startsWith('stopping without telling the peer it is leaving'))).toBe(true);
    // b was not told LEAVING: it asks the witness (down) and may not write alone.
    await until(async () => (await volumeStatus(p.adminB)).connection !== 'Connected', 10_000);
    const cb = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    const written = await cb.write(0, Buffer.alloc(4096, 0x22)).then(
      () => true,
      () => false,
    );
    cb.close();
    expect(written).toBe(false);
    expect((await volumeStatus(p.adminB)).quorum).not.toBe('alone');
  }, 90_000);
});
