// `nbd-mirror attach` between a host and the pair, with a witness and default timeouts: the
// client keeps one connection to attach while nodes are killed, restarted, hung and woken; it
// sees pauses, never an error, and afterwards every acknowledged write is on both nodes.
//
// 1. fio (randwrite, QD16, --verify=crc32c) runs again and again through attach while the
//    active node a is killed (-9), restarted and resynced (I/O moves back to it), hung (SIGSTOP)
//    and woken, and then the standby b is hung and woken. Every run passes its verify; the two
//    nodes' files are identical at the end.
// 2. The re-send rule against a hung node: rounds of overlapping writes (every round rewrites
//    the same blocks) through attach while the active node is stopped with writes in flight;
//    they are sent again to b once b writes alone. When a wakes, whatever it still held (its
//    socket had the old copies) must not end up over a later round: after resync every block
//    holds the last round on both nodes.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachStatus, dataFile, pairInSync, startPair, until, volumeStatus } from '../support/cluster.js';
import { run } from '../support/fixture.js';
import { NbdClient } from '../support/nbd-client.js';
import { cliPath, startAttachProcess, startClusterNode, type RunningServer } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

describe.skipIf(missingTools('fio', 'qemu-io').length > 0)('attach: fail-over and fail-back as a host sees them', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-attach-'));
  const procs: RunningServer[] = [];
  afterAll(async () => {
    for (const p of procs) await p.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('fio verifies through kill -9, restart and resync of the active node, SIGSTOP of the active node, SIGSTOP of the standby', async () => {
    const pair = await startPair(mkdtempSync(join(dir, 'fio-')), '64M', procs);
    const { p } = pair;
    const attach = await startAttachProcess(pair.config);
    procs.push(attach);
    const st = () => attachStatus(attach.adminPort);
    await until(async () => (await st()).active === 'a');

    const job = [
      '--name=attach',
      '--ioengine=nbd',
      `--uri=nbd://127.0.0.1:${attach.port}/vol0`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--size=24M',
      '--verify=crc32c',
      '--verify_fatal=1',
      '--verify_state_save=0',
      `--directory=${dir}`,
      '--output-format=json',
    ];
    let stop = false;
    let runs = 0;
    const errors: string[] = [];
    const loop = (async () => {
      while (!stop) {
        const out = await run('fio', job, { timeoutMs: 120_000 });
        const r = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<{ error: number }> };
        if (r.jobs[0]!.error !== 0) errors.push(out);
        runs++;
      }
    })();
    const busyOn = (node: string) => until(async () => ((await st()).paths[node]?.inFlight ?? 0) > 0, 30_000);

    // 1. kill -9 of the active node with requests in flight: they go to b once b writes alone.
    await busyOn('a');
    await pair.a.stop('SIGKILL');
    await until(async () => (await st()).active === 'b' && (await st()).mode === 'active', 30_000);
    const afterKill = (await st()).lastStall!;
    // 2. a back: it resyncs, then I/O moves back to it (drained, nothing re-sent).
    pair.a = await startClusterNode(pair.config, 'a');
    procs.push(pair.a);
    await until(async () => (await st()).active === 'a' && (await st()).failbacks >= 1, 60_000);
    const failback = (await st()).lastStall!;
    // 3. SIGSTOP of the active node: b takes over after the link timeout and the witness.
    await busyOn('a');
    pair.a.proc.kill('SIGSTOP');
    await until(async () => (await st()).active === 'b' && (await st()).mode === 'active', 30_000);
    const afterHang = (await st()).lastStall!;
    pair.a.proc.kill('SIGCONT');
    await until(async () => (await st()).active === 'a' && (await st()).failbacks >= 2, 60_000);
    // 4. SIGSTOP of the standby: a's mirrored writes wait for the link timeout, then a writes alone; no path change.
    const failoversBefore = (await st()).failovers;
    await busyOn('a');
    pair.b.proc.kill('SIGSTOP');
    await until(async () => (await volumeStatus(p.adminA)).connection !== 'Connected', 30_000);
    pair.b.proc.kill('SIGCONT');
    await until(() => pairInSync(p), 60_000);
    const runsAtEnd = runs;
    await until(() => runs > runsAtEnd, 60_000); // one more full run on the healed pair
    stop = true;
    await loop;

    expect(errors).toEqual([]);
    const end = await st();
    expect(end.failovers).toBe(failoversBefore);
    expect(end.active).toBe('a');
    expect(afterKill.kind).toBe('fail-over');
    expect(afterKill.resent).toBeGreaterThan(0);
    expect(afterHang.kind).toBe('fail-over');
    expect(failback.kind).toBe('fail-back');
    expect(failback.resent).toBe(0);
    console.log(
      `attach pauses: kill -9 ${afterKill.pauseMs} ms (${afterKill.resent} re-sent), SIGSTOP ${afterHang.pauseMs} ms (${afterHang.resent} re-sent), fail-back ${failback.pauseMs} ms; fio runs ${runs}`,
    );
    await until(() => pairInSync(p), 60_000);
    expect(readFileSync(dataFile(dirname(pair.config), 'a')).equals(readFileSync(dataFile(dirname(pair.config), 'b')))).toBe(true);
  }, 300_000);

  it('overlapping writes re-sent after the active node hangs are never overwritten by its old copies', async () => {
    const sub = mkdtempSync(join(dir, 'overlap-'));
    const { p, config, a } = await startPair(sub, '64M', procs);
    const attach = await startAttachProcess(config);
    procs.push(attach);
    const st = () => attachStatus(attach.adminPort);
    await until(async () => (await st()).active === 'a');

    // 32 blocks of 64 KiB, each rewritten every round (all 32 in flight at once); a round's
    // blocks are acknowledged before the next round starts, so the last round is the truth.
    const BLOCKS = 32;
    const BS = 64 * 1024;
    const client = await NbdClient.connect({ port: attach.port, exportName: 'vol0' });
    const pattern = (round: number, block: number) => Buffer.alloc(BS, ((round * 7 + block) % 251) + 1);
    let round = 0;
    let stop = false;
    const writer = (async () => {
      while (!stop) {
        round++;
        await Promise.all(Array.from({ length: BLOCKS }, (_, i) => client.write(i * BS, pattern(round, i))));
      }
    })();
    await until(() => round >= 20);
    a.proc.kill('SIGSTOP');
    const stoppedAt = round;
    await until(async () => (await st()).active === 'b' && (await st()).mode === 'active', 30_000);
    const takeover = (await st()).lastStall!;
    await until(() => round >= stoppedAt + 30, 30_000);
    // a wakes with the old copies still in its socket; it may apply them, but only to its own copy.
    a.proc.kill('SIGCONT');
    await until(() => pairInSync(p), 60_000);
    await until(async () => (await st()).active === 'a', 30_000);
    const wokeAt = round;
    await until(() => round >= wokeAt + 10, 30_000);
    stop = true;
    await writer;
    const last = round;
    await client.flush();

    expect(takeover.resent).toBeGreaterThan(0);
    await until(() => pairInSync(p), 60_000);
    for (const port of [p.nbdA, p.nbdB]) {
      const direct = await NbdClient.connect({ port, exportName: 'vol0' });
      for (let i = 0; i < BLOCKS; i++) expect((await direct.read(i * BS, BS)).equals(pattern(last, i)), `block ${i} via port ${port}`).toBe(true);
      await direct.disconnect();
    }
    await client.disconnect();
    expect(readFileSync(join(sub, 'a', 'vol0.img')).equals(readFileSync(join(sub, 'b', 'vol0.img')))).toBe(true);
  }, 180_000);

  it('volumes spread over both nodes by their preferred node, and each fails over and back on its own', async () => {
    const sub = mkdtempSync(join(dir, 'balance-'));
    const pair = await startPair(sub, '64M', procs, { volumes: { vol0: { size: '64M' }, vol1: { size: '64M', preferredNode: 'b' } } });
    const { config } = pair;
    let a = pair.a;
    const socket = join(sub, 'attach.sock');
    const attach = await startAttachProcess(config, ['--listen', `unix:${socket}`]);
    procs.push(attach);
    const active = async () => [(await attachStatus(attach.adminPort, 'vol0')).active, (await attachStatus(attach.adminPort, 'vol1')).active];
    await until(async () => (await active()).join() === 'a,b');
    const clients = await Promise.all(['vol0', 'vol1'].map((exportName) => NbdClient.connect({ port: attach.port, exportName })));
    await Promise.all(clients.map((c, i) => c.write(0, Buffer.alloc(4096, i + 1))));
    await a.stop('SIGKILL');
    await until(async () => (await active()).join() === 'b,b');
    await Promise.all(clients.map((c, i) => c.write(4096, Buffer.alloc(4096, i + 11))));
    a = await startClusterNode(config, 'a');
    procs.push(a);
    await until(async () => (await active()).join() === 'a,b', 60_000);
    expect((await attachStatus(attach.adminPort, 'vol1')).failovers).toBe(0); // b's volume never moved
    // A real client over the unix socket (the address the docs give qemu), and the status command.
    await run('qemu-io', ['-f', 'raw', `nbd+unix:///vol1?socket=${socket}`, '-c', 'write -P 0x6b 1M 64k', '-c', 'read -P 0x6b 1M 64k']);
    const shown = await run(process.execPath, [cliPath, 'status', '--attach', `127.0.0.1:${attach.adminPort}`]);
    expect(shown).toMatch(/vol0: active on a \(preferred a\).*fail-overs 1 {2}fail-backs 1/);
    expect(shown).toMatch(/vol1: active on b \(preferred b\)/);
    for (const [i, c] of clients.entries()) {
      expect((await c.read(0, 8192)).equals(Buffer.concat([Buffer.alloc(4096, i + 1), Buffer.alloc(4096, i + 11)]))).toBe(true);
      await c.disconnect();
    }
  });

  it('volumes created and grown online are served through attach, and fail over at their new size', async () => {
    const sub = mkdtempSync(join(dir, 'online-'));
    const pair = await startPair(sub, '64M', procs);
    const attach = await startAttachProcess(pair.config);
    procs.push(attach);
    await until(async () => (await attachStatus(attach.adminPort)).active === 'a');
    const admin = (node: 'a' | 'b', ...args: string[]) => run(process.execPath, [cliPath, ...args, '--config', pair.config, '--node', node]);

    // A volume created online (not in the config): attach finds it in the nodes' status.
    await admin('a', 'volume', 'create', 'vol9', '--size', '16M');
    await until(async () => (await attachStatus(attach.adminPort, 'vol9'))?.active === 'a', 15_000);
    await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${attach.port}/vol9`, '-c', 'write -P 0x39 8M 64k']);
    // vol0 grown online: a client of before keeps its 64M (attach-grow.test.ts: what new ones see).
    const client = await NbdClient.connect({ port: attach.port, exportName: 'vol0' });
    await admin('a', 'volume', 'resize', 'vol0', '--size', '96M');
    expect(client.info.size).toBe(64 * 2 ** 20);
    await client.write(0, Buffer.alloc(4096, 0x42));
    await pair.a.stop('SIGKILL');
    await until(async () => (await attachStatus(attach.adminPort)).active === 'b' && (await attachStatus(attach.adminPort, 'vol9')).active === 'b', 30_000);
    await client.write(4096, Buffer.alloc(4096, 0x43));
    expect((await client.read(0, 8192)).equals(Buffer.concat([Buffer.alloc(4096, 0x42), Buffer.alloc(4096, 0x43)]))).toBe(true);
    await client.disconnect();
    await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${attach.port}/vol9`, '-c', 'read -P 0x39 8M 64k']);
  });
});

