// A rogue on the peer port, with real node processes. First, strangers while the real link is up
// and a client writes through node a: bare connects, garbage, a huge HELLO, half-open sockets,
// an impostor HELLO, a foreign source address. The link never drops, both nodes live, the
// copies match, and each source address is logged once. Then, with node a stopped, the rogue
// takes a's place (as item 1 allows: the live link is gone) and sends forged frames: each
// drops the link with no change to node b's data or dirty bits, and b never dies. Node a then
// returns and the pair ends identical. Last, a rogue in a's place floods b with writes and reads
// nothing: b's memory stays bounded (the link's receive budget), its clients are served, and the
// link is reset.
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { xxh3 } from '@node-rs/xxhash';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fetchStatus } from '../../src/admin/admin-client.js';
import { encodeFrameHeader, encodeWriteHeader, PeerMsg, sealDigest, WRITE_HEADER_SIZE } from '../../src/replication/peer-protocol.js';
import { dataFile, pairPorts, until, volumeStatus as status, writePairConfig } from '../support/cluster.js';
import { NbdClient } from '../support/nbd-client.js';
import { memoryOf } from '../support/raw-nbd.js';
import { startClusterNode, type RunningServer } from '../support/processes.js';
import { closedWithin, forged, frameWithin, rangeBody, rogueConnect, rogueHello, writeBody } from '../support/rogue-peer.js';

const MiB = 2 ** 20;
const SIZE = 64 * MiB;
const TIMEOUT = 1000; // link.timeout: half-open sockets are closed within it
const ACK_TIMEOUT = 2000; // link.ackTimeout: a write the peer leaves unanswered this long resets the link
const anyGeneration = { current: '0123456789abcdef', bitmap: '0000000000000000', history: ['0000000000000000', '0000000000000000'] as [string, string] };
const logged = (r: RunningServer, msg: string) => r.logs.filter((l) => l.msg === msg);

describe('a rogue on the peer port', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-rogue-'));
  const running: RunningServer[] = [];
  afterAll(async () => {
    for (const r of running) await r.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  /** Nodes a and b of a new pair (config `name`), linked and in sync. */
  async function syncedPair(name: string) {
    const p = await pairPorts();
    const config = writePairConfig(join(dir, name), p, '64M', p.peerB, { link: { timeout: TIMEOUT, ackTimeout: ACK_TIMEOUT } });
    const a = await startClusterNode(config, 'a');
    const b = await startClusterNode(config, 'b');
    running.push(a, b);
    await until(async () => (await status(p.adminA)).connection === 'Connected' && (await status(p.adminB)).disk === 'UpToDate');
    return { p, config, a, b };
  }

  /** Node a goes away; returns its generation, for a rogue to meet b in sync as a (it may: no live link to disturb). */
  async function killA(a: RunningServer, adminB: number) {
    await a.stop('SIGKILL');
    await until(async () => (await status(adminB)).connection !== 'Connected');
    const meta = readFileSync(join(dir, 'a', 'vol0.meta'));
    const hex = (i: number) => meta.subarray(32 + 8 * i, 40 + 8 * i).toString('hex');
    return { current: hex(0), bitmap: hex(1), history: [hex(2), hex(3)] as [string, string] };
  }

  it('strangers never disturb the live link; forged frames drop only the rogue, change nothing, crash nothing', async () => {
    const { p, config, b, ...first } = await syncedPair('c.json');
    let a = first.a;

    // A real client writes through node a all along (bounded in count).
    const client = await NbdClient.connect({ port: p.nbdA, exportName: 'vol0' });
    let stop = false;
    const writer = (async () => {
      let n = 0;
      for (; !stop && n < 20_000; n++) await client.write(((n * 7919) % 256) * 65536, Buffer.alloc(65536, n % 251));
      return n;
    })();
    const reader = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });

    for (const [name, port] of [['b', p.peerB], ['a', p.peerA]] as const) {
      // Bare connects: no HELLO is ever sent to them, and each is closed within the link timeout.
      const bare = await Promise.all(Array.from({ length: 10 }, () => rogueConnect(port)));
      for (const r of bare) await closedWithin(r, TIMEOUT + 1500);
      expect(bare.every((r) => r.frames.length === 0)).toBe(true);
      // Garbage: closed at its first header.
      const garbage = await rogueConnect(port);
      garbage.send(Buffer.alloc(4096, 0x5a));
      expect(await closedWithin(garbage, 1000)).toBeLessThan(1000);
      // A 28 MiB HELLO: refused at its header, never buffered nor parsed; clients of the node are not stalled.
      const huge = await rogueConnect(port);
      const header = forged(PeerMsg.HELLO).subarray(0, 20);
      header.writeUInt32BE(28 * MiB, 8);
      huge.send(header);
      huge.send(Buffer.alloc(28 * MiB, 0x7b));
      const t0 = Date.now();
      await reader.read(0, 4096);
      expect(Date.now() - t0).toBeLessThan(500);
      await closedWithin(huge, 1000);
      // Half-open: half a header, then silence: closed within the link timeout.
      const half = await rogueConnect(port);
      half.send(header.subarray(0, 10));
      await closedWithin(half, TIMEOUT + 1500);
      // From another host (127.0.0.2 is loopback too): refused at once.
      const foreign = await rogueConnect(port, '127.0.0.2');
      expect(await closedWithin(foreign, 1000)).toBeLessThan(500);
      // An impostor: a valid HELLO claiming to be the peer, with a fresh boot id. The live link
      // answers its probe, so the impostor is refused and the link stays. (Node a, the dialer,
      // takes no inbound link at all.)
      for (let i = 0; i < 5; i++) {
        const impostor = await rogueConnect(port);
        impostor.send(rogueHello(name === 'b' ? 'a' : 'b', SIZE, anyGeneration));
        await closedWithin(impostor, TIMEOUT + 1500);
        expect(impostor.frames.some((f) => f.header.type === PeerMsg.HELLO)).toBe(false); // it learnt nothing
      }
      expect((await status(name === 'b' ? p.adminB : p.adminA)).connection).toBe('Connected');
    }

    stop = true;
    expect(await writer).toBeGreaterThan(0);
    await client.flush();
    reader.close();
    for (const node of [a, b]) expect(logged(node, 'peer link lost')).toHaveLength(0);
    const [sa, sb] = [await status(p.adminA), await status(p.adminB)];
    expect([sa.connection, sb.connection, sa.outOfSyncBytes, sb.outOfSyncBytes]).toEqual(['Connected', 'Connected', 0, 0]);
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(dataFile(dir, 'b')))).toBe(true);
    // Dozens of refusals, logged once per source address (127.0.0.1 and 127.0.0.2).
    for (const node of [a, b]) {
      const refusals = node.logs.filter((l) => l.msg === 'refused a peer-link connection' || l.msg === 'refusing the peer link');
      expect(refusals.length).toBeGreaterThanOrEqual(1);
      expect(new Set(refusals.map((l) => String(l.from).replace(/:\d+$/, ''))).size).toBe(refusals.length);
    }

    // Node a goes away; the rogue takes its place on b's link.
    const generation = await killA(a, p.adminB);
    const bFile = dataFile(dir, 'b');
    const before = { bytes: readFileSync(bFile), bits: (await status(p.adminB)).outOfSyncBytes };
    expect(before.bits).toBe(0); // so the rogue (same generation) meets b in sync: no resync runs
    const cases: Array<[string, Buffer]> = [
      ['WRITE at 1 GiB of a 64 MiB volume', forged(PeerMsg.WRITE, writeBody(0, 1024 * MiB, Buffer.alloc(4096, 1)))],
      ['WRITE across the end', forged(PeerMsg.WRITE, writeBody(0, SIZE - 2048, Buffer.alloc(4096, 1)))],
      ['WRITE at offset 2^64 - 1', forged(PeerMsg.WRITE, (() => { const w = writeBody(0, 0, Buffer.alloc(512, 1)); w.writeBigUInt64BE(2n ** 64n - 1n, 8); return w; })())],
      ['WRITE for volume 7 (there is one)', forged(PeerMsg.WRITE, writeBody(7, 0, Buffer.alloc(4096, 1)), { volume: 7 })],
      ['WRITE whose body names another volume than its id', forged(PeerMsg.WRITE, writeBody(1, 0, Buffer.alloc(4096, 1)))],
      ['TRIM at 1 GiB', forged(PeerMsg.TRIM, rangeBody(0, 1024 * MiB, 4096, Buffer.alloc(4)))],
      ['ZERO with a short body', forged(PeerMsg.ZERO, rangeBody(0, 0, 4096))],
      ['PEER_READ of 4 GiB', forged(PeerMsg.PEER_READ, rangeBody(0, 0, 2 ** 32 - 1))],
      ['RS_REQUEST of 4 GiB', forged(PeerMsg.RS_REQUEST, rangeBody(0, 0, 2 ** 32 - 1))],
      ['RS_REQUEST outside a resync', forged(PeerMsg.RS_REQUEST, rangeBody(0, 0, 65536))],
      ['VERIFY_REQUEST of 2 MiB', forged(PeerMsg.VERIFY_REQUEST, rangeBody(0, 0, 2 * MiB))],
      ['VERIFY_REQUEST of part of a block', forged(PeerMsg.VERIFY_REQUEST, rangeBody(0, 0, 4097))],
      ['RS_CSUM_REQUEST with too few digests', forged(PeerMsg.RS_CSUM_REQUEST, rangeBody(0, 0, MiB, Buffer.alloc(8)))],
      ['RS_ACK outside a resync (would clear bits)', forged(PeerMsg.RS_ACK, rangeBody(0, 0, MiB))],
      ['RS_DONE outside a resync', forged(PeerMsg.RS_DONE, rangeBody(0, 0, 0))],
      ['RS_DATA outside a resync', forged(PeerMsg.RS_DATA, rangeBody(0, 0, 4096, Buffer.alloc(8 + 4096)))],
      ['BITMAP_RUNS of a resync outside one', forged(PeerMsg.BITMAP_RUNS, (() => { const r = Buffer.alloc(20); r.writeDoubleBE(0, 4); r.writeDoubleBE(16, 12); return r; })(), { flags: 1 })],
      ['BITMAP_RUNS past the bitmap', forged(PeerMsg.BITMAP_RUNS, (() => { const r = Buffer.alloc(20); r.writeDoubleBE(1e12, 4); r.writeDoubleBE(16, 12); return r; })())],
      ['RESYNC_NOW with role 7', forged(PeerMsg.RESYNC_NOW, Buffer.from([0, 0, 0, 7]))],
      ['WRITE_ACK of 100 bytes', forged(PeerMsg.WRITE_ACK, Buffer.alloc(100))],
      ['LEAVING with a body', forged(PeerMsg.LEAVING, Buffer.alloc(8))],
      ['DISK_FAILED with an 8-byte body', forged(PeerMsg.DISK_FAILED, Buffer.alloc(8))],
      ['a second HELLO', rogueHello('a', SIZE, generation)],
      ['HELLO_ACK (never used)', forged(PeerMsg.HELLO_ACK)],
      ['type 999', forged(999)],
    ];
    for (const [what, frame] of cases) {
      const r = await rogueConnect(p.peerB);
      r.send(rogueHello('a', SIZE, generation));
      await frameWithin(r, PeerMsg.HELLO, 2000); // b took the rogue for a
      r.send(frame);
      await closedWithin(r, 2000).catch((e: Error) => {
        throw new Error(`${what}: ${e.message}`);
      });
      expect(b.proc.exitCode, what).toBeNull();
      expect((await status(p.adminB)).outOfSyncBytes, what).toBe(before.bits);
      expect(statSync(bFile).size, what).toBe(SIZE);
      expect(logged(b, 'peer sent a malformed frame, dropping the link').length, what).toBeGreaterThan(0);
    }
    expect(readFileSync(bFile).equals(before.bytes)).toBe(true);

    // LEAVING, then the link stays up past link.timeout: the word lapses; the drop is a failure.
    const leaver = await rogueConnect(p.peerB);
    leaver.send(rogueHello('a', SIZE, generation));
    await frameWithin(leaver, PeerMsg.HELLO, 2000);
    leaver.send(forged(PeerMsg.LEAVING, Buffer.alloc(0), { id: 0n }));
    const pinger = setInterval(() => leaver.send(forged(PeerMsg.PING, Buffer.alloc(0), { id: 0n })), 100);
    await until(() => logged(b, 'peer says it is leaving (graceful stop): this node will go on alone').length > 0, 2000);
    await new Promise((res) => setTimeout(res, TIMEOUT + 200)); // the window must pass: nothing to poll for
    clearInterval(pinger);
    leaver.socket.destroy();
    await until(() => logged(b, 'the peer said it was leaving but kept the link up; its disconnect is treated as a failure').length > 0, 3000);

    // A peer that answers heartbeats (it PINGs) but never acknowledges a write: after
    // link.ackTimeout b resets the link and the client's write completes as a degraded write.
    const deaf = await rogueConnect(p.peerB);
    deaf.send(rogueHello('a', SIZE, generation));
    await frameWithin(deaf, PeerMsg.HELLO, 2000);
    await until(async () => (await status(p.adminB)).connection === 'Connected', 3000);
    const deafPinger = setInterval(() => deaf.send(forged(PeerMsg.PING, Buffer.alloc(0), { id: 0n })), 100);
    const onB = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    const t0 = Date.now();
    await onB.write(3 * MiB, Buffer.alloc(65536, 0x6d));
    const held = Date.now() - t0;
    clearInterval(deafPinger);
    expect(await frameWithin(deaf, PeerMsg.WRITE, 100)).toBeDefined(); // it was sent the write, and never answered
    expect(held).toBeGreaterThanOrEqual(ACK_TIMEOUT);
    expect(held).toBeLessThan(ACK_TIMEOUT + 3000);
    expect(logged(b, 'the peer answers heartbeats but not writes: resetting the link').length).toBe(1);
    expect((await status(p.adminB)).outOfSyncBytes).toBeGreaterThanOrEqual(65536);
    onB.close();
    deaf.socket.destroy();
    console.log(`a peer that answers PINGs but not writes held a client write for ${held} ms (link.ackTimeout ${ACK_TIMEOUT} ms)`);

    // The real a returns: the pair links, and both copies are the same.
    a = await startClusterNode(config, 'a');
    running.push(a);
    await until(async () => {
      const [x, y] = [await status(p.adminA), await status(p.adminB)];
      return x.connection === 'Connected' && y.connection === 'Connected' && x.outOfSyncBytes === 0 && y.outOfSyncBytes === 0 && y.resync === null;
    });
    const c2 = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    await c2.write(5 * MiB, Buffer.alloc(65536, 0xee));
    await c2.flush();
    c2.close();
    expect(readFileSync(dataFile(dir, 'a')).equals(readFileSync(bFile))).toBe(true);
  });

  it('a peer that floods writes and never reads holds bounded memory on the node; clients are served; the link is reset', async () => {
    const { p, a, b } = await syncedPair('flood.json');
    const generation = await killA(a, p.adminB);

    const rogue = await rogueConnect(p.peerB);
    rogue.send(rogueHello('a', SIZE, generation));
    await frameWithin(rogue, PeerMsg.HELLO, 2000);
    await until(async () => (await status(p.adminB)).connection === 'Connected', 3000);
    rogue.socket.pause(); // from now on it reads nothing the node sends
    const lostBefore = logged(b, 'peer link lost').length;
    const before = memoryOf(b.proc.pid!);

    // FRAMES FUA writes of 4 MiB, all at offset 0 with valid digests: b applies them one after
    // the other, each with an fdatasync, far slower than loopback brings them.
    const FRAMES = 300;
    const data = Buffer.alloc(4 * MiB, 0x42);
    const digest = sealDigest(xxh3.xxh64(data), 0, 1);
    const writeHeader = encodeWriteHeader({ volume: 0, flags: 1, offset: 0, digest });
    let peak = before.peak;
    const sampler = setInterval(() => (peak = Math.max(peak, memoryOf(b.proc.pid!).peak)), 50);
    let sent = 0;
    const flood = (async () => {
      for (; sent < FRAMES && !rogue.socket.destroyed; sent++) {
        const head = Buffer.concat([encodeFrameHeader(PeerMsg.WRITE, BigInt(sent + 1), WRITE_HEADER_SIZE + data.length), writeHeader]);
        rogue.socket.write(head);
        if (!rogue.socket.write(data)) await Promise.race([once(rogue.socket, 'drain').catch(() => undefined), rogue.closed]);
      }
    })();

    // Meanwhile a client of b writes and reads: the write goes to the rogue, which never answers,
    // so after link.ackTimeout the link is reset and the write completes without the peer.
    const client = await NbdClient.connect({ port: p.nbdB, exportName: 'vol0' });
    const t0 = Date.now();
    await client.write(16 * MiB, Buffer.alloc(65536, 0x6d));
    const held = Date.now() - t0;
    expect((await client.read(16 * MiB, 65536)).equals(Buffer.alloc(65536, 0x6d))).toBe(true);
    client.close();
    // The node reset the link (the rogue, reading nothing, may not even see it until it writes).
    await until(() => logged(b, 'peer link lost').length === lostBefore + 1, 5000);
    rogue.socket.destroy();
    await flood;
    clearInterval(sampler);
    peak = Math.max(peak, memoryOf(b.proc.pid!).peak);
    const grew = (peak - before.peak) / MiB;
    console.log(`a peer flooding ${sent} x 4 MiB FUA writes without reading: node peak RSS +${grew.toFixed(0)} MiB; a client write took ${held} ms; link reset: ${logged(b, 'peer link lost').at(-1)?.reason}`);
    expect(b.proc.exitCode).toBeNull();
    expect(held).toBeLessThan(ACK_TIMEOUT + 3000);
    expect(grew).toBeLessThan(300); // 1.1 GiB without the receive budget: every frame read at once
    expect((await fetchStatus({ host: '127.0.0.1', port: p.adminB })).link.receivePauses).toBeGreaterThan(0);
  });
});
