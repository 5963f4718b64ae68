// What one client can do to a server, standalone and mirrored: it must harm only itself. Each
// test attacks over raw sockets and then proves that the process is alive, its other clients are
// served, and memory stayed flat (the kernel's VmRSS/VmHWM of the server process).
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cmd, CmdFlag, MAX_OPTIONS, NbdErr, Opt, Rep, TransmissionFlag } from '../../src/protocol/constants.js';
import { NbdClient, optionBytes } from '../support/nbd-client.js';
import { serveExport, type Fixture, type ServeMode } from '../support/fixture.js';
import { closed, handshakeBytes, memoryOf, rawConnect, requestHeader } from '../support/raw-nbd.js';
import { until } from '../support/cluster.js';

const MiB = 2 ** 20;
const SEND_TIMEOUT_S = 3;

/** A fresh client writes a pattern and reads it back; the server (and its peer) still run. */
async function healthy(f: Fixture, offset = 60 * MiB): Promise<void> {
  const c = await NbdClient.connect({ port: f.server.port, exportName: f.exportName });
  const data = Buffer.alloc(64 * 1024, (offset / MiB) & 0xff);
  await c.write(offset, data);
  expect((await c.read(offset, data.length)).equals(data)).toBe(true);
  await c.disconnect();
  expect(f.server.proc.exitCode).toBeNull();
  if (f.peer) expect(f.peer.proc.exitCode).toBeNull();
}

function logged(f: Fixture, msg: string): number {
  return f.server.logs.filter((l) => l.msg === msg).length;
}

describe.each<ServeMode>(['standalone', 'mirrored'])('one client cannot hurt the server (%s)', (mode) => {
  let f: Fixture;
  beforeAll(async () => {
    f = await serveExport(mode, { size: '160M', extraArgs: ['--send-timeout', String(SEND_TIMEOUT_S)] });
  });
  afterAll(async () => {
    await f?.cleanup();
  });

  it('the pipelined crash sequence (out-of-range READs, empty BLOCK_STATUS, DISC and bytes after it, a 32 MiB + 1 WRITE header, reset) ends that connection only', async () => {
    const size = 160 * MiB;
    const parts: Buffer[] = [handshakeBytes(f.exportName)];
    for (let i = 0; i < 5000; i++) parts.push(requestHeader(Cmd.READ, size + i * 4096, 4096, i + 1));
    parts.push(requestHeader(Cmd.BLOCK_STATUS, 0, 0, 9001));
    parts.push(requestHeader(Cmd.DISC, 0, 0, 9002), Buffer.alloc(1000, 0xa5));
    parts.push(requestHeader(Cmd.READ, 0, 4096, 9003));
    parts.push(requestHeader(Cmd.WRITE, 0, 32 * MiB + 1, 9004));
    const s = await rawConnect(f.server.port, { read: true });
    s.write(Buffer.concat(parts));
    // Let the server chew on it, then cut the connection hard.
    await until(() => s.bytesRead > 5000 * 16, 10_000);
    s.resetAndDestroy();
    await healthy(f);
    expect(logged(f, 'internal error while handling a request, dropping connection')).toBe(0);
  });

  it('a client that pipelines two 32 MiB READs and never reads stalls only itself, and is dropped after --send-timeout', async () => {
    const stuck: net.Socket[] = [];
    // Two of them: together they hold the whole server pool of 64 MiB.
    for (let i = 0; i < 2; i++) {
      const s = await rawConnect(f.server.port, { read: true });
      s.write(Buffer.concat([handshakeBytes(f.exportName), requestHeader(Cmd.READ, 0, 32 * MiB, 1, CmdFlag.DF), requestHeader(Cmd.READ, 32 * MiB, 32 * MiB, 2, CmdFlag.DF)]));
      // Take the first MiB of the reply (the server is sending it), then read nothing more.
      await new Promise<void>((resolve) => {
        const take = () => {
          if (s.bytesRead < MiB) return;
          s.pause();
          s.off('data', take);
          resolve();
        };
        s.on('data', take);
      });
      stuck.push(s);
    }
    const other = await NbdClient.connect({ port: f.server.port, exportName: f.exportName });
    const t0 = performance.now();
    await other.read(0, 4096);
    const ms = performance.now() - t0;
    expect(ms).toBeLessThan(1000);
    // Dropped once they took nothing for the send timeout (the server says so; a client that
    // reads nothing cannot see the close until it reads); their memory comes back, so a large read works again.
    await until(() => logged(f, 'client took no reply bytes within the send timeout, dropping connection') >= 2, (SEND_TIMEOUT_S * 2 + 5) * 1000);
    for (const s of stuck) s.resume();
    await Promise.all(stuck.map((s) => closed(s, 10_000)));
    expect((await other.read(0, 32 * MiB)).length).toBe(32 * MiB);
    await other.disconnect();
    await healthy(f);
    console.log(`${mode}: a 4 KiB read took ${ms.toFixed(1)} ms while two clients held 64 MiB of unread replies`);
  });

  it('400 CACHE requests of 8 MiB, sent without reading replies, keep memory flat', async () => {
    const before = memoryOf(f.server.proc.pid!);
    const c = await NbdClient.connect({ port: f.server.port, exportName: f.exportName });
    c.socket.pause();
    const done = Array.from({ length: 400 }, (_, i) => c.cache((i % 19) * 8 * MiB, 8 * MiB));
    await until(() => c.socket.writableLength === 0, 10_000); // all of it handed to the kernel
    c.socket.resume();
    await Promise.all(done);
    const after = memoryOf(f.server.proc.pid!);
    await c.disconnect();
    console.log(`${mode}: CACHE flood: peak RSS ${(before.peak / MiB).toFixed(0)} -> ${(after.peak / MiB).toFixed(0)} MiB`);
    expect(after.peak - before.peak).toBeLessThan(64 * MiB);
  });

  it('requests of ~47.5 MiB (over the advertised 32 MiB) are served, pipelined, with the right data; over 64 MiB they are refused and the connection goes on', async () => {
    const c = await NbdClient.connect({ port: f.server.port, exportName: f.exportName, strict: false });
    expect(c.info.blockSizes?.max).toBe(32 * MiB);
    const len = 49_807_360; // 47.5 MiB, as nbd-tester-client's integrityhuge sends
    const patterns = [0x11, 0x22, 0x33].map((p, i) => {
      const b = Buffer.alloc(len, p);
      b.writeUInt32BE(i, 12345); // not uniform, so a misplaced range would show
      return b;
    });
    await Promise.all(patterns.map((b, i) => c.write(i * 50 * MiB, b, i === 2 ? CmdFlag.FUA : 0)));
    const back = await Promise.all(patterns.map((_, i) => c.read(i * 50 * MiB, len)));
    back.forEach((b, i) => expect(b.equals(patterns[i]!)).toBe(true));
    await expect(c.request(Cmd.READ, 0, 64 * MiB + 1)).rejects.toMatchObject({ errno: NbdErr.EINVAL });
    await expect(c.request(Cmd.READ, 0, 64 * MiB + 1, CmdFlag.DF)).rejects.toMatchObject({ errno: NbdErr.EOVERFLOW });
    await expect(c.write(0, Buffer.alloc(64 * MiB + 1))).rejects.toMatchObject({ errno: NbdErr.EINVAL });
    expect((await c.read(0, 4096)).equals(patterns[0]!.subarray(0, 4096))).toBe(true);
    await c.disconnect();
    if (f.peer) {
      // Mirrored: the peer has the same bytes.
      const b = await NbdClient.connect({ port: f.peer.port, exportName: f.exportName, strict: false });
      expect((await b.read(50 * MiB, len)).equals(patterns[1]!)).toBe(true);
      await b.disconnect();
    }
  });

  it('FAST_ZERO is advertised and honoured; a flag the export does not advertise gets EINVAL', async () => {
    const c = await NbdClient.connect({ port: f.server.port, exportName: f.exportName, strict: false });
    expect(c.can(TransmissionFlag.SEND_FAST_ZERO)).toBe(true);
    await c.write(8 * MiB, Buffer.alloc(MiB, 0x5e));
    await c.zero(8 * MiB, MiB, CmdFlag.FAST_ZERO);
    expect((await c.read(8 * MiB, MiB)).equals(Buffer.alloc(MiB))).toBe(true);
    await expect(c.request(Cmd.READ, 0, 4096, CmdFlag.FAST_ZERO)).rejects.toMatchObject({ errno: NbdErr.EINVAL });
    await c.disconnect();
    if (f.peer) {
      const b = await NbdClient.connect({ port: f.peer.port, exportName: f.exportName });
      expect((await b.read(8 * MiB, MiB)).equals(Buffer.alloc(MiB))).toBe(true);
      await b.disconnect();
    }
  });

  it(`a handshake with more than ${MAX_OPTIONS} options gets ERR_TOO_BIG and is closed; an oversize option is skipped with ERR_TOO_BIG`, async () => {
    const s = await rawConnect(f.server.port, { read: true });
    const replies: number[] = [];
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 18 && replies.length === 0 && buf.readUInt32BE(0) === 0x4e42444d) buf = buf.subarray(18); // greeting
      while (buf.length >= 20) {
        const len = buf.readUInt32BE(16);
        if (buf.length < 20 + len) break;
        replies.push(buf.readUInt32BE(12));
        buf = buf.subarray(20 + len);
      }
    });
    const many = Array.from({ length: 1000 }, () => optionBytes(Opt.STRUCTURED_REPLY));
    s.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), ...many]));
    await closed(s, 10_000);
    expect(replies.slice(0, MAX_OPTIONS).every((r) => r === Rep.ACK)).toBe(true);
    expect(replies.slice(MAX_OPTIONS)).toEqual([Rep.ERR_TOO_BIG]);

    // A 10 MiB option: skipped without buffering, answered ERR_TOO_BIG, and the handshake goes on to GO.
    const c = await NbdClient.open(f.server.port);
    await expect(c.option(Opt.INFO, Buffer.alloc(10 * MiB))).rejects.toMatchObject({ reply: Rep.ERR_TOO_BIG });
    c.info = await c.go(f.exportName);
    expect(c.info.size).toBe(160 * MiB);
    await c.disconnect();
    await healthy(f);
  });
});

describe('many connections', () => {
  let f: Fixture;
  const MAX = 1500;
  beforeAll(async () => {
    f = await serveExport('standalone', { size: '64M', extraArgs: ['--max-connections', String(MAX)] });
  });
  afterAll(async () => {
    await f?.cleanup();
  });

  it(`${MAX} idle connections cost little memory; one more is refused with a log line; a freed place is taken again`, async () => {
    const before = memoryOf(f.server.proc.pid!);
    const idle: NbdClient[] = [];
    for (let i = 0; i < MAX - 1; i++) idle.push(await NbdClient.connect({ port: f.server.port, exportName: f.exportName }));
    const last = await NbdClient.connect({ port: f.server.port, exportName: f.exportName });
    const after = memoryOf(f.server.proc.pid!);
    const perConnection = (after.rss - before.rss) / MAX;
    console.log(`${MAX} idle connections: RSS ${(before.rss / MiB).toFixed(0)} -> ${(after.rss / MiB).toFixed(0)} MiB (${(perConnection / 1024).toFixed(1)} KiB each)`);
    expect(perConnection).toBeLessThan(64 * 1024);
    // One over the limit: closed at once, before the greeting.
    const over = await rawConnect(f.server.port, { read: true });
    await closed(over, 5000);
    expect(over.bytesRead).toBe(0);
    await until(() => logged(f, 'connection refused: the server has --max-connections connections already') > 0, 5000);
    // Every open one still works; one closes and a new client takes its place.
    expect((await last.read(0, 4096)).length).toBe(4096);
    const closedBefore = logged(f, 'connection closed');
    await last.disconnect();
    await until(() => logged(f, 'connection closed') > closedBefore, 5000);
    await healthy(f, 32 * MiB);
    for (const c of idle) c.close();
  });
});
