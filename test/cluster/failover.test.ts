// Failover and failback as a client sees them, with a witness and default timeouts: a client
// writes a verifiable sequence to node a; a is killed (-9); the client reconnects to b and goes
// on; a returns and resyncs by itself; the client moves back to a. Then b hangs (SIGSTOP, no
// socket closes: only the link timeout notices) while the client keeps writing to a, and wakes
// up again as a node the witness has declared outdated. At the end every acknowledged write
// reads back on both nodes. Prints the stalls (target ≤ 3 s with default timeouts).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dataFile, pairPorts, until, volumeStatus, witnessGrants, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { startClusterNode, startWitnessProcess, type RunningServer } from '../support/processes.js';

const BLOCK = 4096;
const BLOCKS = 2048; // the sequence wraps around 8 MiB, so later writes overwrite earlier ones

/** Block content for sequence number `seq`: the number itself, then a fill derived from it. */
function content(seq: number): Buffer {
  const b = Buffer.alloc(BLOCK, 1 + (seq % 251));
  b.writeUInt32BE(seq, 0);
  return b;
}

describe('client-visible failover and failback with a witness', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-failover-'));
  const procs: RunningServer[] = [];
  const clients: NbdClient[] = [];
  afterAll(async () => {
    for (const c of clients) c.close();
    for (const r of procs) {
      r.proc.kill('SIGCONT');
      await r.stop('SIGKILL');
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('kill -9 of the node a client writes to: the client goes on at the peer; both come back in sync; no acknowledged write lost', async () => {
    const p = await pairPorts();
    const witness = await startWitnessProcess(join(dir, 'witness.json'));
    procs.push(witness);
    // One config file for both nodes, default link timeout (2 s) and quorum policy.
    const config = writePairConfig(join(dir, 'cluster.json'), p, '64M', p.peerB, { witness: `127.0.0.1:${witness.port}` });
    let a = await startClusterNode(config, 'a');
    let b = await startClusterNode(config, 'b');
    procs.push(a, b);
    const port = { a: p.nbdA, b: p.nbdB };
    const inSync = async () => {
      for (const admin of [p.adminA, p.adminB]) {
        const s = await volumeStatus(admin);
        if (s.connection !== 'Connected' || s.disk !== 'UpToDate' || s.outOfSyncBytes !== 0 || s.resync !== null) return false;
      }
      return true;
    };
    await until(inSync);

    /** Latest acknowledged sequence number per block. */
    const acked = new Map<number, number>();
    let seq = 0;
    let client = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    clients.push(client);

    /** Writes `n` more of the sequence through `client`, one at a time (a failed one is retried by the caller). */
    const writeSome = async (n: number) => {
      for (const end = seq + n; seq < end; seq++) {
        await client.write((seq % BLOCKS) * BLOCK, content(seq));
        acked.set(seq % BLOCKS, seq);
      }
    };
    /** The client's multipath: the write that failed goes to the other node, reconnecting until it answers. */
    const failOver = async (to: 'a' | 'b'): Promise<number> => {
      client.close();
      for (const end = Date.now() + 20_000; ; ) {
        try {
          client = await NbdClient.connect({ port: port[to], exportName: 'vol0' });
          clients.push(client);
          await writeSome(1);
          return Date.now();
        } catch (err) {
          if (Date.now() > end) throw err;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    };

    // 1. Writing to a; a dies in the middle of it.
    await writeSome(500);
    const writing = writeSome(1_000_000).catch(() => undefined); // ends at the first failed write
    await until(() => seq >= 800);
    const killedAt = Date.now();
    a.proc.kill('SIGKILL');
    await writing;
    const failoverStall = (await failOver('b')) - killedAt;
    await writeSome(500);
    expect((await volumeStatus(p.adminB)).quorum).toBe('alone');
    expect(await witnessGrants(witness.port)).toEqual({ 'a+b': expect.objectContaining({ holder: 'b' }) }); // default cluster id

    // 2. a returns and resyncs by itself; the client moves back to a as soon as a is connected.
    a = await startClusterNode(config, 'a');
    procs.push(a);
    await until(async () => (await volumeStatus(p.adminA)).connection === 'Connected');
    await failOver('a');
    await writeSome(500);
    await until(inSync);
    await until(async () => Object.keys(await witnessGrants(witness.port)).length === 0); // b gave the grant back
    const resynced = (await volumeStatus(p.adminA)).lastResync;

    // 3. b hangs (no socket closes): a's writes wait for the link timeout and the witness, then go on.
    const hungAt = Date.now();
    b.proc.kill('SIGSTOP');
    const first = writeSome(1).then(() => Date.now());
    const hangStall = (await first) - hungAt;
    await writeSome(500);
    expect((await volumeStatus(p.adminA)).quorum).toBe('alone');
    // b wakes up after the witness gave the grant to a: it must not write alone; it resyncs from a.
    b.proc.kill('SIGCONT');
    await until(inSync);
    await writeSome(200);

    // Every acknowledged write reads back on both nodes.
    const readers = await Promise.all([p.nbdA, p.nbdB].map((port) => NbdClient.connect({ port, exportName: 'vol0' })));
    clients.push(...readers);
    for (const [block, last] of acked) {
      for (const r of readers) expect((await r.read(block * BLOCK, BLOCK)).equals(content(last)), `block ${block}, write ${last}`).toBe(true);
    }
    await client.flush();
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
    console.log(
      [
        `failover stall (kill -9 of a -> first acknowledged write on b): ${failoverStall} ms (target <= 3000 ms)`,
        `hung peer stall (SIGSTOP of b -> next acknowledged write on a): ${hangStall} ms (link timeout 2000 ms + witness; target <= 3000 ms)`,
        `a's resync on return: ${resynced?.bytes} bytes in ${resynced?.seconds} s; ${seq} writes, ${acked.size} blocks verified on both nodes`,
      ].join('\n'),
    );
  });
});
