// Two mirrored volumes in one process, linked through a cuttable proxy: writes land on both
// files, racing overlapping writes end identical, and a cut link turns writes into durable
// dirty bits.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { xxh3 } from '@node-rs/xxhash';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Hotpath } from '../../src/hotpath/index.js';
import { nbdErrno } from '../../src/protocol/errors.js';
import { DiskState, VolumeMeta } from '../../src/meta/volume-meta.js';
import type { HelloFields } from '../../src/replication/hello.js';
import { MirroredVolume, type MirroredVolumeOptions, type PeerPort } from '../../src/replication/mirrored-volume.js';
import type { VerifyReport } from '../../src/replication/verify.js';
import { decodeHoles, decodeRange, encodeDigest, encodeHoles, encodeRange, encodeWriteHeader, PEER_VERSION, PeerMsg, RANGE_SIZE, sealDigest, type ByteRun } from '../../src/replication/peer-protocol.js';
import { PeerLink } from '../../src/replication/peer-link.js';
import { FileVolume } from '../../src/volume/file-volume.js';
import { freePort } from '../support/processes.js';
import { until } from '../support/cluster.js';
import { TcpProxy } from '../support/tcp-proxy.js';

const MiB = 2 ** 20;
const SIZE = 16 * MiB;
const GRAIN = 4096;
const log = pino({ level: 'silent' });
const gen = { current: '0123456789abcdef', bitmap: '0000000000000000', history: ['0000000000000000', '0000000000000000'] as [string, string] };
const hello = (node: string): HelloFields => ({ version: PEER_VERSION, cluster: 'c', node, volumes: [{ name: 'vol0', size: SIZE, generation: gen, state: 'UpToDate' as const, dirty: false, checksum: false, dirtyBytes: 0, trackingSince: 0 }] });


const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** `roomBits`: hot-path room for one more bitmap (a volume grown online). */
async function cluster(roomBits = 0) {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-mv-'));
  const bPort = await freePort();
  const proxy = new TcpProxy({ host: '127.0.0.1', port: bPort });
  await proxy.start();
  const node = (name: 'a' | 'b') => {
    const peerName = name === 'a' ? 'b' : 'a';
    const file = FileVolume.open(join(dir, `${name}.img`), { createSize: SIZE });
    const hot = Hotpath.create({ bitmaps: [SIZE / GRAIN, ...(roomBits ? [roomBits] : [])], slotArenaBytes: 8 * MiB, stagingBytes: 4 * MiB, ...MirroredVolume.sizing(GRAIN) });
    const meta = VolumeMeta.open(join(dir, `${name}.meta`), { cluster: 'c', node: name, volumeSize: SIZE, grain: GRAIN }, hot);
    let mv: MirroredVolume | undefined;
    const link = new PeerLink({
      hello: () => hello(name),
      listen: { host: '127.0.0.1', port: name === 'b' ? bPort : 0 },
      peer: { host: '127.0.0.1', port: proxy.port },
      peerName,
      timeoutMs: 500,
      log,
      allocBody: (n) => hot.slots.acquire(n),
      releaseBody: (body) => hot.slots.release(body),
      onFrame: (h, body) => mv!.handleFrame(h, body),
      onDisconnected: () => mv!.peerLost('link lost'),
    });
    const peer: PeerPort = {
      get connected() {
        return link.state === 'Connected';
      },
      send: (t, id, body, flags) => link.send(t, id, body, flags),
      afterSend: (fn) => link.afterSend(fn),
      reset: (reason) => link.reconnect(reason),
      release: (body) => link.release(body),
    };
    mv = new MirroredVolume({ local: file, meta, peer, volumeIndex: 0, node: name, peerName, grain: GRAIN, hot, log });
    cleanups.push(async () => {
      link.stop();
      meta.close();
      await file.close();
    });
    return { mv, link, meta, file, path: join(dir, `${name}.img`) };
  };
  const b = node('b');
  const a = node('a');
  // As after the initial agreement of two fresh nodes: same generation, both UpToDate.
  a.meta.saveIdentity({ state: DiskState.UpToDate });
  b.meta.saveIdentity({ state: DiskState.UpToDate, generation: a.meta.generation });
  await b.link.start();
  await a.link.start();
  cleanups.push(() => proxy.stop(), () => rmSync(dir, { recursive: true, force: true }));
  await until(() => a.link.state === 'Connected' && b.link.state === 'Connected');
  return { a, b, proxy };
}

const write = (mv: MirroredVolume, off: number, data: Buffer) => new Promise<void>((res, rej) => mv.write(data, off, false, (e) => (e ? rej(e) : res())));
const flush = (mv: MirroredVolume) => new Promise<void>((res, rej) => mv.flush((e) => (e ? rej(e) : res())));

/**
 * One mirrored volume whose peer is a stub that records the frames sent and never answers, so a
 * test controls every step (`deliver` hands it a frame as if from the peer).
 */
function withStubPeer(node: 'a' | 'b', quorum?: MirroredVolumeOptions['quorum']) {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-mv-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const file = FileVolume.open(join(dir, `${node}.img`), { createSize: SIZE });
  const hot = Hotpath.create({ bitmaps: [SIZE / GRAIN], stagingBytes: 4 * MiB, ...MirroredVolume.sizing(GRAIN) });
  const meta = VolumeMeta.open(join(dir, `${node}.meta`), { cluster: 'c', node, volumeSize: SIZE, grain: GRAIN }, hot);
  cleanups.push(async () => (meta.close(), await file.close()));
  const sent: Array<{ type: number; id: bigint; body: Buffer }> = [];
  const peer = {
    connected: true,
    send: (type: number, id: bigint, body?: Buffer | readonly Buffer[]) => (sent.push({ type, id, body: Buffer.concat(body === undefined ? [] : Buffer.isBuffer(body) ? [body] : [...body]) }), peer.connected),
    afterSend: (fn: () => void) => fn(),
    reset: () => undefined,
    release: () => undefined,
  };
  const mv = new MirroredVolume({ local: file, meta, peer, volumeIndex: 0, node, peerName: node === 'a' ? 'b' : 'a', grain: GRAIN, hot, log, quorum });
  const types = () => sent.map((f) => f.type);
  return { mv, meta, peer, sent, types, hot, path: join(dir, `${node}.img`) };
}

/** A quorum gate that holds every request to write alone until the test answers it (`held`). */
function heldQuorum() {
  const held: Array<(err: Error | null) => void> = [];
  const quorum = { writable: false, readable: true, whenWritable: (cb: (err: Error | null) => void) => void held.push(cb), whenReadable: (cb: (err: Error | null) => void) => cb(null) };
  return { held, quorum };
}

/** Answers a stub target's last RS_HOLES_REQUEST as a source would: these holes (none: all data). */
function answerHoles(mv: MirroredVolume, sent: ReadonlyArray<{ type: number; id: bigint; body: Buffer }>, holes: ByteRun[] = []) {
  const req = sent.filter((f) => f.type === PeerMsg.RS_HOLES_REQUEST).at(-1)!;
  const { offset, length } = decodeRange(req.body);
  const body = encodeHoles(0, offset, length, holes, xxh3.xxh64);
  mv.handleFrame({ type: PeerMsg.RS_HOLES, flags: 0, length: body.length, id: req.id }, body);
}

describe('mirrored volume (in-process pair)', () => {
  it('a write acknowledged on either node is on both files', async () => {
    const { a, b } = await cluster();
    await write(a.mv, 4096, Buffer.alloc(65536, 0xa1));
    await write(b.mv, 2 * MiB, Buffer.alloc(4096, 0xb2));
    await flush(a.mv);
    for (const path of [a.path, b.path]) {
      const f = readFileSync(path);
      expect(f.subarray(4096, 4096 + 65536).every((x) => x === 0xa1)).toBe(true);
      expect(f.subarray(2 * MiB, 2 * MiB + 4096).every((x) => x === 0xb2)).toBe(true);
    }
    expect(a.meta.bitmap.count()).toBe(0);
  });

  it('grows online on both nodes in turn while both write: writes held, none lost, identical, the new range mirrored', async () => {
    const { a, b } = await cluster(4 * SIZE / GRAIN);
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    const ops: Array<Promise<void>> = [];
    const burst = () => {
      for (let i = 0; i < 100; i++) ops.push(write(rnd(2) ? a.mv : b.mv, rnd(SIZE / 4096) * 4096, Buffer.alloc(4096, rnd(256))));
    };
    const grow = (n: typeof a) => new Promise<void>((res, rej) => n.mv.grow(4 * SIZE, () => n.file.grow(4 * SIZE), (e) => (e ? rej(e) : res())));
    burst();
    await grow(b); // the peer first, as volume-ops.ts does, with writes in flight from both
    burst();
    await grow(a);
    burst();
    await Promise.all(ops);
    // The new range, written on one node, reaches the other.
    await write(b.mv, 4 * SIZE - 4096, Buffer.alloc(4096, 0x77));
    await flush(a.mv);
    expect(a.mv.size).toBe(4 * SIZE);
    const fa = readFileSync(a.path);
    expect(fa.length).toBe(4 * SIZE);
    expect(fa.equals(readFileSync(b.path))).toBe(true);
    expect(fa.subarray(4 * SIZE - 4096).every((x) => x === 0x77)).toBe(true);
    for (const n of [a, b]) {
      expect(n.meta.bitmap.bits).toBe((4 * SIZE) / GRAIN);
      expect(n.meta.bitmap.count()).toBe(0);
      expect(VolumeMeta.recordedSize(n.meta.path)).toBe(4 * SIZE);
    }
  });

  it('trim and write-zeroes are mirrored too', async () => {
    const { a, b } = await cluster();
    await write(a.mv, 0, Buffer.alloc(MiB, 0x42));
    await new Promise<void>((res, rej) => a.mv.zero(65536, 65536, { noHole: true, fastZero: false, fua: false }, (e) => (e ? rej(e) : res())));
    await new Promise<void>((res, rej) => b.mv.trim(512 * 1024, 65536, true, (e) => (e ? rej(e) : res())));
    await flush(a.mv);
    const fa = readFileSync(a.path);
    expect(fa.equals(readFileSync(b.path))).toBe(true);
    expect(fa.subarray(65536, 131072).every((x) => x === 0)).toBe(true);
    expect(fa.subarray(512 * 1024, 576 * 1024).every((x) => x === 0)).toBe(true);
    expect(fa.subarray(0, 65536).every((x) => x === 0x42)).toBe(true);
  });

  it('racing overlapping writes and zeroes on both nodes end byte-identical on both replicas', async () => {
    const { a, b } = await cluster();
    let seed = 12345;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    const ops: Array<Promise<void>> = [];
    for (let i = 0; i < 400; i++) {
      const node = i % 2 === 0 ? a : b;
      const len = 512 * (1 + rnd(128)); // 512 B … 64 KiB
      const off = 512 * rnd((256 * 1024 - len) / 512); // all inside 256 KiB: many overlaps
      if (i % 10 === 9) ops.push(new Promise<void>((res, rej) => node.mv.zero(off, len, { noHole: i % 20 === 9, fastZero: false, fua: false }, (e) => (e ? rej(e) : res()))));
      else ops.push(write(node.mv, off, Buffer.alloc(len, 1 + (i % 250))));
    }
    await Promise.all(ops);
    await flush(a.mv);
    await flush(b.mv);
    const fa = readFileSync(a.path);
    const fb = readFileSync(b.path);
    expect(fa.subarray(0, 256 * 1024).some((x) => x !== 0)).toBe(true);
    expect(fa.equals(fb)).toBe(true);
  });

  it('with the link cut, writes complete once their dirty bits are durable, and only those bits are set', async () => {
    const { a, b, proxy } = await cluster();
    proxy.cut();
    await until(() => a.link.state !== 'Connected' && b.link.state !== 'Connected');
    await write(a.mv, 8 * MiB, Buffer.alloc(3 * 4096 + 100, 0xcc));
    await write(a.mv, 8 * MiB + 4096, Buffer.alloc(4096, 0xcd)); // already dirty: no new bits
    expect(a.meta.bitmap.runs()).toEqual([{ start: (8 * MiB) / GRAIN, length: 4 }]);
    // a now tracks changes from the generation both had in common; b never wrote alone.
    expect(a.meta.generation.bitmap).toBe(b.meta.generation.current);
    expect(b.meta.generation.bitmap).toBe('0000000000000000');
    expect(b.meta.bitmap.count()).toBe(0);
    expect(readFileSync(b.path).subarray(8 * MiB, 8 * MiB + 4096).every((x) => x === 0)).toBe(true);
  });

  // regression graceful-leave-crossing-writes: a peer that said LEAVING was trusted to have made
  // everything durable, but writes sent before its LEAVING arrived cross it, and a power cut before
  // its closing flush lost them with nothing marked here. Any link loss now marks them.
  it('writes the peer stored but has not flushed are out of sync here once the link goes (any link loss); flushed ones are not', async () => {
    const { a, b, proxy } = await cluster();
    await write(a.mv, 0, Buffer.alloc(8192, 0x11));
    await flush(a.mv); // durable on b: forgotten by the transfer log
    await write(a.mv, 4 * MiB, Buffer.alloc(4096, 0x22)); // stored on b, not flushed there
    proxy.cut();
    await until(() => a.link.state !== 'Connected' && b.link.state !== 'Connected');
    expect(a.meta.bitmap.runs()).toEqual([{ start: (4 * MiB) / GRAIN, length: 1 }]);
  });

  it('after the link heals, a resync copies only the dirty ranges while both nodes keep writing', async () => {
    const { a, b, proxy } = await cluster();
    proxy.cut();
    await until(() => a.link.state !== 'Connected' && b.link.state !== 'Connected');
    // a goes on alone: 3 ranges of 64 KiB (48 grains) become dirty on a only.
    for (const off of [1 * MiB, 5 * MiB, 9 * MiB]) await write(a.mv, off, Buffer.alloc(65536, off / MiB));
    expect(a.meta.bitmap.count()).toBe(48);
    proxy.restore();
    await until(() => a.link.state === 'Connected' && b.link.state === 'Connected');
    const resynced = Promise.all([
      new Promise<void>((res, rej) => a.mv.startResync('source', (e) => (e ? rej(e) : res()))),
      new Promise<void>((res, rej) => b.mv.startResync('target', (e) => (e ? rej(e) : res()))),
    ]);
    // Client writes on both nodes during the resync, some on the ranges being copied.
    const during = [write(b.mv, 5 * MiB + 4096, Buffer.alloc(8192, 0x77)), write(a.mv, 9 * MiB, Buffer.alloc(4096, 0x88)), write(b.mv, 12 * MiB, Buffer.alloc(4096, 0x99))];
    await Promise.all([resynced, ...during]);
    await flush(a.mv);
    await flush(b.mv);
    expect(a.meta.bitmap.count()).toBe(0);
    expect(b.meta.bitmap.count()).toBe(0);
    expect(readFileSync(a.path).equals(readFileSync(b.path))).toBe(true);
    const f = readFileSync(b.path);
    expect(f.subarray(1 * MiB, 1 * MiB + 65536).every((x) => x === 1)).toBe(true);
    expect(f.subarray(5 * MiB + 4096, 5 * MiB + 12288).every((x) => x === 0x77)).toBe(true);
    expect(f.subarray(9 * MiB, 9 * MiB + 4096).every((x) => x === 0x88)).toBe(true);
  });

  it('checksum resync moves only the blocks that differ, and ends identical', async () => {
    const { a, b, proxy } = await cluster();
    await write(a.mv, 0, Buffer.alloc(MiB, 0x11));
    await new Promise<void>((res, rej) => a.mv.flush((e) => (e ? rej(e) : res()))); // durable on b: not marked when the link goes
    proxy.cut();
    await until(() => a.link.state !== 'Connected' && b.link.state !== 'Connected');
    await write(a.mv, 3 * 4096, Buffer.alloc(8192, 0x22)); // 2 grains really differ
    // As after a crash: a whole extent marked out of sync on b that is in fact identical.
    await new Promise<void>((res) => b.meta.markDirty(256, 512, () => res()));
    proxy.restore();
    await until(() => a.link.state === 'Connected' && b.link.state === 'Connected');
    await Promise.all([
      new Promise<void>((res, rej) => a.mv.startResync('source', (e) => (e ? rej(e) : res()), true)),
      new Promise<void>((res, rej) => b.mv.startResync('target', (e) => (e ? rej(e) : res()), true)),
    ]);
    expect(b.mv.resyncedBytesTotal).toBe((2 + 512) * 4096); // every out-of-sync byte was covered…
    expect(b.mv.resyncWireBytesTotal).toBe(8192); // …but only the differing blocks moved
    expect(a.mv.resyncWireBytesTotal).toBe(8192);
    expect(a.meta.bitmap.count() + b.meta.bitmap.count()).toBe(0);
    expect(readFileSync(a.path).equals(readFileSync(b.path))).toBe(true);
  });

  it('online verify finds exactly the blocks that differ while clients write on both nodes, and marks them on both', async () => {
    const { a, b } = await cluster();
    for (let off = 0; off < SIZE; off += MiB) await write(a.mv, off, Buffer.alloc(MiB, 0x42));
    // Damage b's copy behind its back: 4 KiB at 5 MiB + 4 KiB, 8 KiB at 9 MiB.
    const fd = openSync(b.path, 'r+');
    writeSync(fd, Buffer.alloc(4096, 0xee), 0, 4096, 5 * MiB + 4096);
    writeSync(fd, Buffer.alloc(8192, 0xee), 0, 8192, 9 * MiB);
    closeSync(fd);
    // Clients hammer both nodes during the verify, next to the damage but not on it.
    let stop = false;
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    const hammer = async (mv: MirroredVolume) => {
      let n = 0;
      for (; !stop && n < 5000; n++) {
        const off = [4 * MiB, 5 * MiB + 8192, 9 * MiB + 8192, 12 * MiB][rnd(4)]! + 4096 * rnd(8);
        await write(mv, off, Buffer.alloc(4096, rnd(256)));
      }
      return n;
    };
    const hammers = [a.mv, a.mv, a.mv, b.mv, b.mv, b.mv].map(hammer);
    const reports: VerifyReport[] = [];
    for (let i = 0; i < 3; i++) reports.push(await new Promise<VerifyReport>((res, rej) => a.mv.verify((e, r) => (e ? rej(e) : res(r!)))));
    stop = true;
    expect((await Promise.all(hammers)).every((n) => n > 0)).toBe(true);
    for (const r of reports) {
      expect(r.ranges).toEqual([
        { offset: 5 * MiB + 4096, length: 4096 },
        { offset: 9 * MiB, length: 8192 },
      ]);
    }
    const report = reports[0]!;
    expect(report.outOfSyncBytes).toBe(12288);
    expect(report.doneBytes).toBe(SIZE);
    expect(report.unverifiedBytes).toBe(0);
    expect(a.meta.bitmap.runs(0, Infinity)).toEqual([
      { start: (5 * MiB + 4096) / 4096, length: 1 },
      { start: (9 * MiB) / 4096, length: 2 },
    ]);
    await until(() => b.meta.bitmap.count() === 3);
  });

  it('a resync target serves reads of ranges not copied yet from the source, never stale data', async () => {
    const { a, b, proxy } = await cluster();
    proxy.cut();
    await until(() => a.link.state !== 'Connected' && b.link.state !== 'Connected');
    await write(a.mv, 3 * MiB, Buffer.alloc(65536, 0x5e));
    proxy.restore();
    await until(() => a.link.state === 'Connected' && b.link.state === 'Connected');
    const done = Promise.all([
      new Promise<void>((res, rej) => a.mv.startResync('source', (e) => (e ? rej(e) : res()))),
      new Promise<void>((res, rej) => b.mv.startResync('target', (e) => (e ? rej(e) : res()))),
    ]);
    // Issued before the target even knows what is dirty: it must wait, then fetch from a.
    const got = Buffer.alloc(65536);
    const read = new Promise<void>((res, rej) => b.mv.read(got, 3 * MiB, (e) => (e ? rej(e) : res())));
    expect(b.mv.resync?.role).toBe('target');
    // Its local file has a hole there; allocation status must not send clients past the data.
    const extents = await new Promise<Array<{ length: number; flags: number }>>((res, rej) => b.mv.extents(3 * MiB, 65536, 16, (e, x) => (e ? rej(e) : res(x))));
    expect(extents).toEqual([{ length: 65536, flags: 0 }]);
    await read;
    expect(got.every((x) => x === 0x5e)).toBe(true);
    await done;
  });

  it('a resync target that loses its source fails reads of ranges it lacks (EIO), serves the rest', async () => {
    const { mv, peer, sent, types } = withStubPeer('b');
    let resyncError: Error | null = null;
    mv.startResync('target', (e) => (resyncError = e));
    expect(types()).toContain(PeerMsg.BITMAP_RUNS);
    // The source's runs: grains 768..783 (3 MiB .. 3 MiB + 64 KiB) are stale here.
    const runs = Buffer.alloc(20);
    runs.writeDoubleBE(768, 4);
    runs.writeDoubleBE(16, 12);
    mv.handleFrame({ type: PeerMsg.BITMAP_RUNS, flags: 1, length: runs.length, id: 1n }, runs);
    answerHoles(mv, sent);
    await until(() => types().includes(PeerMsg.RS_REQUEST));
    peer.connected = false;
    mv.peerLost('link lost');
    expect(resyncError).toBeInstanceOf(Error);
    const read = (off: number) => new Promise<Error | null>((res) => mv.read(Buffer.alloc(4096), off, res));
    expect(await read(3 * MiB)).toMatchObject({ code: 'MIRROR_NOT_RESYNCED', osCode: 'EIO' });
    expect(await read(10 * MiB)).toBeNull();
  });

  it('a resync target whose source reports its disk failed does not become the only good copy: no writes, no new generation, lacking ranges not served', async () => {
    const { mv, meta, sent, types, hot, path } = withStubPeer('b');
    mv.startResync('target', () => undefined);
    const runs = Buffer.alloc(20); // grains 768..783 (3 MiB .. 3 MiB + 64 KiB) are stale here
    runs.writeDoubleBE(768, 4);
    runs.writeDoubleBE(16, 12);
    mv.handleFrame({ type: PeerMsg.BITMAP_RUNS, flags: 1, length: runs.length, id: 1n }, runs);
    answerHoles(mv, sent);
    // A client write mirrored before the failure; the source answers it after (stored nowhere).
    const inFlight = write(mv, 5 * MiB, Buffer.alloc(4096, 0x11)).then(() => null, (e: Error) => e);
    await until(() => types().includes(PeerMsg.WRITE));
    const before = meta.generation;
    const eio = Buffer.alloc(4);
    eio.writeUInt32BE(5);
    mv.handleFrame({ type: PeerMsg.DISK_FAILED, flags: 0, length: 4, id: 2n }, eio);
    expect(mv.peerDiskFailed).toBe(true);
    expect(mv.complete).toBe(false);
    mv.handleFrame({ type: PeerMsg.WRITE_ACK, flags: 0, length: 4, id: sent.find((f) => f.type === PeerMsg.WRITE)!.id }, Buffer.alloc(4));
    expect(await inFlight).toMatchObject({ code: 'MIRROR_INCOMPLETE_COPY', osCode: 'EIO' });
    expect(meta.bitmap.any(5 * MiB / GRAIN, 1)).toBe(true); // resynced from the source later
    // New client writes fail before anything is sent or written.
    const writesSent = types().filter((t) => t === PeerMsg.WRITE).length;
    expect(await write(mv, 6 * MiB, Buffer.alloc(4096, 0x22)).then(() => null, (e: Error) => e)).toMatchObject({ code: 'MIRROR_INCOMPLETE_COPY', osCode: 'EIO' });
    expect(types().filter((t) => t === PeerMsg.WRITE).length).toBe(writesSent);
    // The failed node's clients' writes (forwarded here) fail too, unapplied.
    const data = Buffer.alloc(4096, 0x33);
    const header = encodeWriteHeader({ volume: 0, flags: 0, offset: 7 * MiB, digest: sealDigest(hot.digestOf(data), 7 * MiB, 0) });
    const frame = Buffer.concat([header, data]);
    mv.handleFrame({ type: PeerMsg.WRITE, flags: 0, length: frame.length, id: 3n }, frame);
    await until(() => sent.some((f) => f.type === PeerMsg.WRITE_ACK && f.id === 3n));
    expect(sent.find((f) => f.type === PeerMsg.WRITE_ACK && f.id === 3n)!.body.readUInt32BE(0)).toBe(5);
    expect(readFileSync(path).subarray(7 * MiB, 7 * MiB + 4096).every((x) => x === 0)).toBe(true);
    // Its reads of a range not resynced here are not served from this copy; the rest are.
    const range = encodeRange(0, 3 * MiB, 4096);
    mv.handleFrame({ type: PeerMsg.PEER_READ, flags: 0, length: range.length, id: 4n }, range);
    await until(() => sent.some((f) => f.type === PeerMsg.PEER_READ_DATA && f.id === 4n));
    expect(sent.find((f) => f.type === PeerMsg.PEER_READ_DATA && f.id === 4n)!.body.readUInt32BE(RANGE_SIZE)).toBe(5);
    const held = encodeRange(0, 10 * MiB, 4096);
    mv.handleFrame({ type: PeerMsg.PEER_READ, flags: 0, length: held.length, id: 5n }, held);
    await until(() => sent.some((f) => f.type === PeerMsg.PEER_READ_DATA && f.id === 5n));
    expect(sent.find((f) => f.type === PeerMsg.PEER_READ_DATA && f.id === 5n)!.body.readUInt32BE(RANGE_SIZE)).toBe(0);
    // Its own reads: what it holds locally; a range it lacks is asked of the peer, never read here.
    expect(await new Promise<Error | null>((res) => mv.read(Buffer.alloc(4096), 10 * MiB, res))).toBeNull();
    const peerReads = types().filter((t) => t === PeerMsg.PEER_READ).length;
    void mv.read(Buffer.alloc(4096), 3 * MiB, () => undefined);
    expect(types().filter((t) => t === PeerMsg.PEER_READ).length).toBe(peerReads + 1);
    // No new generation, still Inconsistent: the next connection resyncs it from the peer.
    expect(meta.generation).toEqual(before);
    expect(meta.state).toBe(DiskState.Inconsistent);
  });

  it('regression flush-on-incomplete-copy: a FLUSH from a Failed peer is refused by a copy that is behind it', async () => {
    // Power-cut chaos with disk errors (CI-like run, seed 78834 round 3): b wrote alone, its disk
    // failed with writes not yet flushed, a came back behind; b's client FLUSH went to a, which
    // answered it, so the FLUSH succeeded; b's power cut then lost those writes on both nodes.
    const { mv, sent } = withStubPeer('a');
    mv.markPeerDiskFailed('the peer reports its disk failed', true);
    mv.handleFrame({ type: PeerMsg.FLUSH, flags: 0, length: 0, id: 9n }, Buffer.alloc(0));
    await until(() => sent.some((f) => f.type === PeerMsg.FLUSH_ACK && f.id === 9n));
    expect(sent.find((f) => f.type === PeerMsg.FLUSH_ACK && f.id === 9n)!.body.readUInt32BE(0)).toBe(5); // EIO
  });

  it('regression forwarded-write-named-first: with the peer\'s disk Failed, its forwarded write is named by a durable bit before it reaches this disk', async () => {
    // Soak (disk-error phase, ENOSPC on a, then both nodes cut): a forwarded write landing here,
    // torn by the cut, was named by no bit (marked only after it landed) and by no activity log
    // (its sender has no disk): the resync skipped it and the copies stayed different.
    const { mv, meta, sent, hot } = withStubPeer('b');
    mv.markPeerDiskFailed('the peer reports its disk failed');
    const local = (mv as unknown as { ctx: { local: { write: (...a: unknown[]) => void } } }).ctx.local;
    const seen: Array<{ bit: boolean; syncs: number }> = [];
    const syncsBefore = meta.bitmapSyncs;
    const write = local.write.bind(local);
    local.write = (...args: unknown[]) => (seen.push({ bit: meta.bitmap.any(Math.floor((5 * MiB) / GRAIN), 1), syncs: meta.bitmapSyncs }), write(...args));
    const data = Buffer.alloc(4096, 0x44);
    const header = encodeWriteHeader({ volume: 0, flags: 0, offset: 5 * MiB, digest: sealDigest(hot.digestOf(data), 5 * MiB, 0) });
    const frame = Buffer.concat([header, data]);
    mv.handleFrame({ type: PeerMsg.WRITE, flags: 0, length: frame.length, id: 11n }, frame);
    await until(() => sent.some((f) => f.type === PeerMsg.WRITE_ACK && f.id === 11n));
    expect(sent.find((f) => f.type === PeerMsg.WRITE_ACK && f.id === 11n)!.body.readUInt32BE(0)).toBe(0);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.bit).toBe(true);
    expect(seen[0]!.syncs).toBeGreaterThan(syncsBefore); // the bit was on disk before the data went out
  });

  it('a complete copy that is behind its Failed peer (the peer wrote without it) does not become the only good copy: no writes, nothing read locally', async () => {
    const { mv, meta, types } = withStubPeer('a');
    const before = meta.generation;
    mv.markPeerDiskFailed('the peer reports its disk failed', true); // as cluster-node decides from the HELLO
    expect(mv.complete).toBe(false);
    expect(await write(mv, 0, Buffer.alloc(4096, 1)).then(() => null, (e: Error) => e)).toMatchObject({ code: 'MIRROR_INCOMPLETE_COPY', osCode: 'EIO' });
    expect(types()).not.toContain(PeerMsg.WRITE);
    void mv.read(Buffer.alloc(4096), 10 * MiB, () => undefined); // no bits say what it lacks: asked of the (Failed) peer
    expect(types()).toContain(PeerMsg.PEER_READ);
    expect(meta.generation).toEqual(before);
  });

  it('a write waiting for quorum when its peer vanished fails (EIO) if the peer comes back first: never acknowledged, never lost', async () => {
    // A quorum gate that holds writes, as one does while the witness is asked or refuses.
    const { held, quorum } = heldQuorum();
    const { mv, meta, peer, types } = withStubPeer('b', quorum);
    const before = meta.generation;
    let result: Error | null | undefined;
    mv.write(Buffer.alloc(4096, 7), 0, false, (e) => (result = e));
    await until(() => types().includes(PeerMsg.WRITE)); // mirrored, the peer never answers
    peer.connected = false;
    mv.peerLost('link lost');
    await until(() => held.length === 1); // its bit is durable; it waits for quorum
    expect(result).toBeUndefined();
    expect(meta.bitmap.count()).toBe(1);
    peer.connected = true; // the link is back before any grant
    held[0]!(null);
    await until(() => result !== undefined);
    expect(result).toMatchObject({ code: 'MIRROR_HELD_TOO_LONG', osCode: 'EIO' });
    expect(meta.generation).toEqual(before); // this node did not start writing alone
  });

  it('a write asked for with the peer there, whose turn comes after the link is lost, goes on alone only with quorum', async () => {
    // A node that hung wakes up to requests in its sockets: it reads them while its link still
    // looks up, and loses the link before their turn. They must wait for the quorum gate (and
    // fail when it says no): never acknowledged alone, no new generation (found by attach's
    // SIGSTOP test: the woken node's generation moved and the pair saw a split brain).
    const { held, quorum } = heldQuorum();
    const { mv, meta, peer, types } = withStubPeer('a', quorum);
    const before = meta.generation;
    let result: Error | null | undefined;
    mv.write(Buffer.alloc(4096, 9), 0, false, (e) => (result = e)); // its activity-log write is under way
    peer.connected = false;
    mv.peerLost('link lost');
    await until(() => held.length === 1);
    expect(result).toBeUndefined();
    expect(types()).not.toContain(PeerMsg.WRITE);
    held[0]!(Object.assign(new Error('witness refused'), { code: 'EIO' }));
    await until(() => result !== undefined);
    expect(result).toMatchObject({ message: 'witness refused' });
    expect(meta.generation).toEqual(before);
    expect(meta.bitmap.count()).toBe(0);
  });

  it('regression flush-after-link-loss: a flush the link loss cuts off is answered only with quorum, and then starts a new generation', async () => {
    // Power-cut chaos (witness-grant phase, soak seed 31337 round 23): a write acknowledged by
    // both, then a FLUSH; the peer lost power before it flushed, and this node answered the
    // flush from its own disk without quorum. Both nodes lost power; the peer came back first,
    // got the grant and resynced its older copy over the flushed write.
    const { held, quorum } = heldQuorum();
    const { mv, meta, peer, sent } = withStubPeer('b', quorum);
    const before = meta.generation;
    const written = write(mv, 0, Buffer.alloc(4096, 5));
    await until(() => sent.some((f) => f.type === PeerMsg.WRITE));
    mv.handleFrame({ type: PeerMsg.WRITE_ACK, flags: 0, length: 4, id: sent.find((f) => f.type === PeerMsg.WRITE)!.id }, Buffer.alloc(4));
    await written; // stored on both, durable on neither
    const results: Array<Error | null | undefined> = [undefined, undefined];
    mv.flush((e) => (results[0] = e));
    await until(() => sent.some((f) => f.type === PeerMsg.FLUSH));
    peer.connected = false;
    mv.peerLost('link lost');
    mv.flush((e) => (results[1] = e)); // asked after the loss: the same rule
    await until(() => held.length === 2);
    expect(results).toEqual([undefined, undefined]); // local disk flushed, the bit durable: both wait for quorum
    expect(meta.bitmap.count()).toBe(1); // what the peer may have lost is marked
    held[0]!(Object.assign(new Error('no quorum'), { code: 'EIO' })); // one is refused (whichever asked first)
    await until(() => results.some((r) => r !== undefined));
    expect(results.filter((r) => r !== undefined)).toMatchObject([{ message: 'no quorum' }]);
    expect(meta.generation).toEqual(before);
    held[1]!(null); // the other granted: this copy counts alone from now on
    await until(() => results.every((r) => r !== undefined));
    expect(results.filter((r) => r === null)).toHaveLength(1);
    expect(meta.generation.current).not.toBe(before.current);
    expect(meta.generation.bitmap).toBe(before.current);
  });

  it('regression flush-at-peer-return: a flush asked alone is answered when the peer comes back and this copy leads, refused while the resync is undecided', async () => {
    // attach-ext4 (full suite, loaded box): the peer restarted while an fsync's FLUSH waited for
    // this node's quorum; the flush was failed although this copy, the resync source, held it.
    const { held, quorum } = heldQuorum();
    const { mv, peer } = withStubPeer('b', quorum);
    peer.connected = false;
    mv.peerLost('link lost');
    const results: Array<Error | null | undefined> = [undefined, undefined];
    mv.flush((e) => (results[0] = e));
    mv.flush((e) => (results[1] = e));
    await until(() => held.length === 2);
    peer.connected = true; // the link is back; the volume has not decided its resync yet
    held[0]!(null);
    await until(() => results[0] !== undefined);
    expect(results[0]).toMatchObject({ code: 'MIRROR_HELD_TOO_LONG' });
    mv.connected('peer back, nothing to copy'); // decided: this copy leads
    held[1]!(null);
    await until(() => results[1] !== undefined);
    expect(results[1]).toBeNull();
  });

  it('an activity-log flush without the peer (flushForLog) needs no quorum and starts no generation; what the peer may have lost is marked first', async () => {
    const { held, quorum } = heldQuorum();
    const { mv, meta, peer, sent } = withStubPeer('a', quorum);
    const before = meta.generation;
    const written = write(mv, 8192, Buffer.alloc(4096, 6));
    await until(() => sent.some((f) => f.type === PeerMsg.WRITE));
    mv.handleFrame({ type: PeerMsg.WRITE_ACK, flags: 0, length: 4, id: sent.find((f) => f.type === PeerMsg.WRITE)!.id }, Buffer.alloc(4));
    await written;
    peer.connected = false;
    mv.peerLost('link lost');
    const syncsBefore = meta.bitmapSyncs;
    await new Promise<void>((res, rej) => mv.flushForLog((e) => (e ? rej(e) : res())));
    expect(held).toHaveLength(0); // the quorum gate was never asked
    expect(meta.generation).toEqual(before);
    expect(meta.bitmap.count()).toBe(1);
    expect(meta.bitmapSyncs).toBeGreaterThan(syncsBefore); // the bit is on disk before the extent may leave the log
  });

  it('a write the peer fails is reported failed and marked out of sync, so the copies never differ unnoticed', async () => {
    const { mv, meta, sent } = withStubPeer('a');
    const result = write(mv, 8192, Buffer.alloc(8192, 3)).then(() => null, (e: Error) => e);
    await until(() => sent.some((f) => f.type === PeerMsg.WRITE));
    const frame = sent.find((f) => f.type === PeerMsg.WRITE)!;
    const enospc = Buffer.alloc(4);
    enospc.writeUInt32BE(28); // the peer's disk errno travels in its answer
    mv.handleFrame({ type: PeerMsg.WRITE_ACK, flags: 0, length: 4, id: frame.id }, enospc);
    expect(await result).toMatchObject({ code: 'MIRROR_PEER_FAILED', osCode: 'ENOSPC' });
    expect(nbdErrno(await result)).toBe(28);
    expect(meta.bitmap.count()).toBe(2);
  });

  it('an incomplete copy (a resync to it cut short) takes no writes without its peer; a brand-new one does', async () => {
    const cut = withStubPeer('b');
    cut.meta.saveIdentity({ state: DiskState.Inconsistent, generation: { ...gen, history: ['1111111111111111', '0000000000000000'] } });
    cut.peer.connected = false;
    const before = cut.meta.generation;
    await expect(write(cut.mv, 0, Buffer.alloc(4096, 1))).rejects.toMatchObject({ code: 'MIRROR_INCOMPLETE_COPY', osCode: 'EIO' });
    expect(cut.meta.generation).toEqual(before);
    const fresh = withStubPeer('a');
    fresh.peer.connected = false;
    await write(fresh.mv, 0, Buffer.alloc(4096, 1));
    expect(fresh.meta.state).toBe(DiskState.UpToDate); // the only copy of its data
    await write(fresh.mv, 4096, Buffer.alloc(4096, 2));
  });
});

describe('the hole walk of a resync (RS_HOLES_REQUEST / RS_HOLES)', () => {
  const allDirty = () => {
    const runs = Buffer.alloc(20);
    runs.writeDoubleBE(0, 4);
    runs.writeDoubleBE(SIZE / GRAIN, 12);
    return runs;
  };
  const deliver = (mv: MirroredVolume, type: PeerMsg, id: bigint, body: Buffer, flags = 0) => mv.handleFrame({ type, flags, length: body.length, id }, body);
  const writeFile = (path: string, offset: number, data: Buffer) => {
    const fd = openSync(path, 'r+');
    writeSync(fd, data, 0, data.length, offset);
    closeSync(fd);
  };

  it('a target zeroes its data where the source has holes, pulls only the source\'s data, and acknowledges every grain; forged answers are refused first, changing nothing', async () => {
    const { mv, meta, sent, path } = withStubPeer('b');
    // Old data here: at 1 MiB (a hole on the source) and at 8 MiB (data on the source).
    writeFile(path, MiB, Buffer.alloc(65536, 0x0d));
    writeFile(path, 8 * MiB, Buffer.alloc(65536, 0x0d));
    let ended: Error | null | undefined;
    mv.startResync('target', (e) => (ended = e));
    deliver(mv, PeerMsg.BITMAP_RUNS, 1n, allDirty(), 1);
    const ask = sent.find((f) => f.type === PeerMsg.RS_HOLES_REQUEST)!;
    expect(decodeRange(ask.body)).toMatchObject({ offset: 0, length: SIZE }); // the whole 16 MiB in one span
    expect(sent.some((f) => f.type === PeerMsg.RS_REQUEST)).toBe(false); // nothing pulled before the holes are known

    // Forged answers: for no open request, for another range, runs out of order, less than a grain. Each is refused.
    expect(() => deliver(mv, PeerMsg.RS_HOLES, ask.id + 99n, encodeHoles(0, 0, SIZE, [], xxh3.xxh64))).toThrow(/RS_HOLES for volume 0: it answers no RS_HOLES_REQUEST of ours/);
    expect(() => deliver(mv, PeerMsg.RS_HOLES, ask.id, encodeHoles(0, MiB, MiB, [], xxh3.xxh64))).toThrow(/it answers 1048576\+1048576, we asked 0\+16777216/);
    const unordered = encodeHoles(0, 0, SIZE, [{ offset: 2 * MiB, length: MiB }, { offset: 0, length: MiB }], xxh3.xxh64);
    expect(() => deliver(mv, PeerMsg.RS_HOLES, ask.id, unordered)).toThrow(/out of order or overlapping/);
    expect(() => deliver(mv, PeerMsg.RS_HOLES, ask.id, encodeHoles(0, 0, 100, [], xxh3.xxh64))).toThrow(/covers less than one grain/);
    // A damaged answer (its digest fails) is no refusal: it is asked for again, as damaged data is.
    const damaged = encodeHoles(0, 0, SIZE, [{ offset: 0, length: SIZE }], xxh3.xxh64);
    damaged.writeUInt8(damaged.readUInt8(damaged.length - 1) ^ 1, damaged.length - 1);
    deliver(mv, PeerMsg.RS_HOLES, ask.id, damaged);
    expect(mv.integrityErrors).toBe(1);
    expect(sent.filter((f) => f.type === PeerMsg.RS_HOLES_REQUEST && f.id === ask.id).map((f) => decodeRange(f.body))).toEqual([decodeRange(ask.body), decodeRange(ask.body)]);
    expect(meta.bitmap.count()).toBe(SIZE / GRAIN);
    expect(readFileSync(path).subarray(MiB, MiB + 65536).every((x) => x === 0x0d)).toBe(true);
    expect(sent.some((f) => f.type === PeerMsg.RS_REQUEST || f.type === PeerMsg.RS_ACK)).toBe(false);

    // The real answer: data only in [8 MiB, 10 MiB).
    answerHoles(mv, sent, [{ offset: 0, length: 8 * MiB }, { offset: 10 * MiB, length: 6 * MiB }]);
    await until(() => sent.filter((f) => f.type === PeerMsg.RS_REQUEST).length === 2);
    const requests = sent.filter((f) => f.type === PeerMsg.RS_REQUEST);
    expect(requests.map((f) => decodeRange(f.body))).toEqual([{ volume: 0, offset: 8 * MiB, length: MiB }, { volume: 0, offset: 9 * MiB, length: MiB }]);
    // An answer once none is open is refused too.
    expect(() => deliver(mv, PeerMsg.RS_HOLES, ask.id, encodeHoles(0, 0, SIZE, [], xxh3.xxh64))).toThrow(/answers no RS_HOLES_REQUEST/);
    for (const r of requests) {
      const { offset, length } = decodeRange(r.body);
      const data = Buffer.alloc(length, 0x5a);
      deliver(mv, PeerMsg.RS_DATA, r.id, Buffer.concat([encodeRange(0, offset, length), encodeDigest(sealDigest(xxh3.xxh64(data), offset)), data]));
    }
    await until(() => ended !== undefined);
    expect(ended).toBeNull();
    const file = readFileSync(path);
    expect(file.subarray(0, 8 * MiB).every((x) => x === 0)).toBe(true); // its old data in the source's hole is gone
    expect(file.subarray(8 * MiB, 10 * MiB).every((x) => x === 0x5a)).toBe(true);
    expect(file.subarray(10 * MiB).every((x) => x === 0)).toBe(true);
    expect(meta.bitmap.count()).toBe(0);
    // Every grain acknowledged, once: each hole's grains in one RS_ACK, the data per request.
    const acks = sent.filter((f) => f.type === PeerMsg.RS_ACK).map((f) => decodeRange(f.body)).sort((x, y) => x.offset - y.offset);
    expect(acks.map((a) => [a.offset / MiB, a.length / MiB])).toEqual([[0, 8], [8, 1], [9, 1], [10, 6]]);
    expect(mv.resyncWireBytesTotal).toBe(2 * MiB);
    expect(mv.resyncedBytesTotal).toBe(SIZE);
  });

  it('a peer write that reaches the target after its RS_HOLES_REQUEST waits for the holes to be applied and lands on top of the zeroing', async () => {
    const { mv, sent, path } = withStubPeer('b');
    writeFile(path, MiB, Buffer.alloc(65536, 0x0d)); // old data here, in what is a hole on the source
    let ended: Error | null | undefined;
    mv.startResync('target', (e) => (ended = e));
    deliver(mv, PeerMsg.BITMAP_RUNS, 1n, allDirty(), 1);
    expect(sent.some((f) => f.type === PeerMsg.RS_HOLES_REQUEST)).toBe(true);
    // The source's client writes at 1 MiB after it answered (so its answer calls 1 MiB a hole):
    // the WRITE follows the answer there, but arrives first here — it must still land last.
    const data = Buffer.alloc(65536, 0x77);
    const write = Buffer.concat([encodeWriteHeader({ volume: 0, flags: 0, offset: MiB, digest: sealDigest(xxh3.xxh64(data), MiB, 0) }), data]);
    deliver(mv, PeerMsg.WRITE, 9n, write);
    await new Promise((res) => setTimeout(res, 50)); // it would be on disk and acknowledged by now if it did not wait
    expect(sent.some((f) => f.type === PeerMsg.WRITE_ACK)).toBe(false);
    answerHoles(mv, sent, [{ offset: 0, length: SIZE }]);
    await until(() => sent.some((f) => f.type === PeerMsg.WRITE_ACK && f.id === 9n) && ended !== undefined);
    expect(ended).toBeNull();
    const file = readFileSync(path);
    expect(file.subarray(MiB, MiB + 65536).every((x) => x === 0x77)).toBe(true);
    expect(file.subarray(MiB + 65536, 2 * MiB).every((x) => x === 0)).toBe(true);
    expect(sent.some((f) => f.type === PeerMsg.RS_REQUEST)).toBe(false); // all holes: nothing pulled
  });

  it('a source answers from its allocation map, after a write that started before is on disk: that write is data', async () => {
    const { mv, sent, types } = withStubPeer('a');
    mv.startResync('source', () => undefined);
    deliver(mv, PeerMsg.BITMAP_RUNS, 1n, allDirty(), 1);
    // A client write mirrored (the stub never answers it); its local write may still be running.
    void write(mv, 5 * MiB, Buffer.alloc(65536, 0x44)).catch(() => undefined);
    await until(() => types().includes(PeerMsg.WRITE));
    deliver(mv, PeerMsg.RS_HOLES_REQUEST, 7n, encodeRange(0, 4 * MiB, 12 * MiB));
    await until(() => sent.some((f) => f.type === PeerMsg.RS_HOLES));
    const answer = sent.find((f) => f.type === PeerMsg.RS_HOLES)!;
    expect(answer.id).toBe(7n);
    expect(decodeRange(answer.body)).toMatchObject({ offset: 4 * MiB, length: 12 * MiB });
    expect(decodeHoles(answer.body)).toEqual([{ offset: 4 * MiB, length: MiB }, { offset: 5 * MiB + 65536, length: 11 * MiB - 65536 }]);
  });
});

describe('frames in the wrong state or outside the volume change nothing (the receiver table)', () => {
  const range = (offset: number, length: number) => {
    const b = Buffer.alloc(16);
    b.writeBigUInt64BE(BigInt(offset), 4);
    b.writeUInt32BE(length, 12);
    return b;
  };
  const frame = (type: number, body: Buffer, flags = 0) => ({ type, flags, length: body.length, id: 1n });

  it('RS_ACK, RS_DONE and last BITMAP_RUNS outside a resync are refused; the bits stay', async () => {
    const { mv, meta } = withStubPeer('a');
    await new Promise<void>((res) => meta.markDirty(0, 256, () => res()));
    expect(() => mv.handleFrame(frame(PeerMsg.RS_ACK, range(0, MiB)), range(0, MiB))).toThrow(/RS_ACK.*not expected/);
    const runs = Buffer.alloc(20);
    runs.writeDoubleBE(1024, 4);
    runs.writeDoubleBE(16, 12);
    expect(() => mv.handleFrame(frame(PeerMsg.BITMAP_RUNS, runs, 1), runs)).toThrow(/BITMAP_RUNS.*not expected/);
    expect(() => mv.handleFrame(frame(PeerMsg.RS_DONE, range(0, 0)), range(0, 0))).toThrow(/RS_DONE/);
    expect(meta.bitmap.runs(0, Infinity)).toEqual([{ start: 0, length: 256 }]);
  });

  it('a resync target refuses what only a source takes (RS_ACK, RS_REQUEST), and resync data for another range is never written', async () => {
    const { mv, meta, sent } = withStubPeer('b');
    mv.startResync('target', () => undefined);
    const runs = Buffer.alloc(20);
    runs.writeDoubleBE(0, 4);
    runs.writeDoubleBE(16, 12);
    mv.handleFrame(frame(PeerMsg.BITMAP_RUNS, runs, 1), runs);
    expect(() => mv.handleFrame(frame(PeerMsg.RS_ACK, range(0, 65536)), range(0, 65536))).toThrow(/only a resync source/);
    expect(() => mv.handleFrame(frame(PeerMsg.RS_REQUEST, range(0, 65536)), range(0, 65536))).toThrow(/only a resync source/);
    expect(() => mv.handleFrame(frame(PeerMsg.BITMAP_RUNS, runs, 1), runs)).toThrow(/arrived already/);
    expect(meta.bitmap.count()).toBe(16);
    answerHoles(mv, sent);
    await until(() => sent.some((f) => f.type === PeerMsg.RS_REQUEST));
    // The target asked for [0, 64 KiB); an answer for [1 MiB, 1 MiB + 64 KiB) counts as damage and is asked for again.
    const req = sent.find((f) => f.type === PeerMsg.RS_REQUEST)!;
    const data = Buffer.concat([range(MiB, 65536), Buffer.alloc(8), Buffer.alloc(65536, 9)]);
    mv.handleFrame({ type: PeerMsg.RS_DATA, flags: 0, length: data.length, id: req.id }, data);
    expect(mv.integrityErrors).toBe(1);
    expect(sent.filter((f) => f.type === PeerMsg.RS_REQUEST && f.id === req.id)).toHaveLength(2);
  });

  it('a peer WRITE past the end, a 2 MiB VERIFY_REQUEST, a 4 GiB PEER_READ are refused before anything runs', () => {
    const { mv } = withStubPeer('a');
    const w = Buffer.alloc(24 + 4096);
    w.writeBigUInt64BE(BigInt(SIZE), 8);
    expect(() => mv.handleFrame(frame(PeerMsg.WRITE, w), w)).toThrow(/outside the volume/);
    expect(() => mv.handleFrame(frame(PeerMsg.VERIFY_REQUEST, range(0, 2 * MiB)), range(0, 2 * MiB))).toThrow(/exceeds/);
    expect(() => mv.handleFrame(frame(PeerMsg.PEER_READ, range(0, 2 ** 32 - 1)), range(0, 2 ** 32 - 1))).toThrow(/outside the volume|exceeds/);
  });
});
