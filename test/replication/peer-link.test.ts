// Two peer links on loopback, the dialer going through a proxy that the test cuts and restores.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { HelloFields } from '../../src/replication/hello.js';
import { PeerLink } from '../../src/replication/peer-link.js';
import type { LinkLimits } from '../../src/replication/link-limits.js';
import { encodeFrame, PEER_VERSION, PeerMsg, type FrameHeader } from '../../src/replication/peer-protocol.js';
import { freePort } from '../support/processes.js';
import { until } from '../support/cluster.js';
import { TcpProxy } from '../support/tcp-proxy.js';

/** Log messages of both links, so tests can wait for what happened instead of sleeping. */
const logged: string[] = [];
const log = pino({ level: 'debug' }, { write: (line: string) => void logged.push(JSON.parse(line).msg) });
const gen = { current: '0123456789abcdef', bitmap: '0000000000000000', history: ['0000000000000000', '0000000000000000'] as [string, string] };
const hello = (node: string, over: Partial<HelloFields> = {}): HelloFields => ({
  version: PEER_VERSION,
  cluster: 'hospital',
  node,
  volumes: [{ name: 'vol0', size: 2 ** 30, generation: gen, state: 'UpToDate' as const, dirty: false, checksum: false, dirtyBytes: 0, trackingSince: 0 }],
  ...over,
});


const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

/** Node b listens; node a (sorts first, so it dials) reaches b through a proxy. */
async function pair(opts: { bHello?: HelloFields; timeoutMs?: number; aSendStallMs?: number; aLimits?: Partial<LinkLimits>; bLimits?: Partial<LinkLimits>; bOnFrame?: (h: FrameHeader, body: Buffer) => void } = {}) {
  const bPort = await freePort();
  const proxy = new TcpProxy({ host: '127.0.0.1', port: bPort });
  await proxy.start();
  const events: string[] = [];
  const frames: number[] = [];
  const reasons: string[] = [];
  const b = new PeerLink({
    hello: () => opts.bHello ?? hello('b'),
    listen: { host: '127.0.0.1', port: bPort },
    peer: { host: '127.0.0.1', port: 1 }, // b never dials
    peerName: 'a',
    timeoutMs: opts.timeoutMs ?? 400,
    log,
    limits: opts.bLimits,
    onConnected: () => events.push('b up'),
    onDisconnected: () => events.push('b down'),
    onFrame: opts.bOnFrame ?? ((h) => frames.push(h.type)),
  });
  const a = new PeerLink({
    hello: () => hello('a'),
    listen: { host: '127.0.0.1', port: 0 },
    peer: { host: '127.0.0.1', port: proxy.port },
    peerName: 'b',
    timeoutMs: opts.timeoutMs ?? 400,
    log,
    limits: opts.aLimits,
    sendStallMs: opts.aSendStallMs,
    onConnected: () => events.push('a up'),
    onDisconnected: (reason) => (events.push('a down'), reasons.push(reason)),
  });
  cleanups.push(() => a.stop(), () => b.stop(), () => proxy.stop());
  await b.start();
  await a.start();
  return { a, b, proxy, events, frames, reasons, bPort };
}

describe('peer link', () => {
  it('connects, carries frames, and keeps the link alive with heartbeats', async () => {
    const { a, b, frames } = await pair();
    await until(() => a.state === 'Connected' && b.state === 'Connected');
    expect(b.peer?.node).toBe('a');
    expect(a.send(PeerMsg.FLUSH, 7n)).toBe(true);
    await until(() => frames.includes(PeerMsg.FLUSH));
    // Several timeouts pass with only heartbeats: still connected.
    await new Promise((r) => setTimeout(r, 1200));
    expect(a.state).toBe('Connected');
    expect(b.state).toBe('Connected');
  });

  it('notices a cut link within the timeout on both sides and reconnects when it heals', async () => {
    const { a, b, proxy, events } = await pair();
    await until(() => a.state === 'Connected' && b.state === 'Connected');
    proxy.cut();
    const cutAt = Date.now();
    await until(() => a.state === 'Connecting' && b.state === 'Connecting');
    expect(Date.now() - cutAt).toBeLessThan(1500);
    proxy.restore();
    await until(() => a.state === 'Connected' && b.state === 'Connected');
    expect(events.filter((e) => e === 'a up')).toHaveLength(2);
    expect(events).toContain('b down');
  });

  it('refuses a peer from another cluster or with another volume size, and says why', async () => {
    for (const bHello of [hello('b', { cluster: 'elsewhere' }), hello('b', { volumes: [{ name: 'vol0', size: 2 ** 31, generation: gen, state: 'UpToDate' as const, dirty: false, checksum: false, dirtyBytes: 0, trackingSince: 0 }] })]) {
      logged.length = 0;
      const { a, b } = await pair({ bHello });
      await until(() => logged.filter((m) => m === 'refusing the peer link' || m === 'peer refused the link').length >= 2);
      expect(a.state).not.toBe('Connected');
      expect(b.state).not.toBe('Connected');
      for (const c of cleanups.splice(0)) await c();
    }
  });

  it('drops a rogue peer sending garbage, and the real peer still connects', async () => {
    const { a, b, bPort } = await pair();
    await until(() => b.state === 'Connected');
    const rogue = net.connect(bPort, '127.0.0.1');
    await new Promise((r) => rogue.once('connect', r));
    const closed = new Promise((r) => rogue.once('close', r));
    rogue.write(Buffer.concat([encodeFrame(PeerMsg.HELLO, 0n, Buffer.from('{"not":"a hello"}'))]));
    rogue.resume();
    await closed;
    await until(() => a.state === 'Connected' && b.state === 'Connected');
  });
});

describe('strangers and restarts', () => {
  const raw = (port: number, localAddress = '127.0.0.1') =>
    new Promise<{ s: net.Socket; closed: Promise<void>; got: Buffer[] }>((res, rej) => {
      const s = net.connect({ port, host: '127.0.0.1', localAddress });
      const got: Buffer[] = [];
      s.on('data', (d) => got.push(d));
      s.on('error', () => undefined);
      const closed = new Promise<void>((r) => s.once('close', () => r()));
      s.once('connect', () => res({ s, closed, got }));
      s.once('error', rej);
    });
  const asA = (boot: string) => encodeFrame(PeerMsg.HELLO, 0n, Buffer.from(JSON.stringify({ ...hello('a'), boot })));

  it('an impostor with a fresh boot id is refused while the live link answers; a foreign host at once', async () => {
    const { a, b, bPort, events } = await pair();
    await until(() => a.state === 'Connected' && b.state === 'Connected');
    const foreign = await raw(bPort, '127.0.0.2');
    await foreign.closed;
    const impostor = await raw(bPort);
    impostor.s.write(asA('feedfacefeedface'));
    await impostor.closed;
    expect(Buffer.concat(impostor.got).toString()).toMatch(/a live link with this peer is up/);
    expect(b.peer?.boot).toBe(a.bootId);
    expect(events).not.toContain('b down');
  });

  it('a restarted peer whose old connection went silent replaces it within half the timeout', async () => {
    // A long dead-peer timeout (4 s), so it is the probe (2 s) that finds the old link dead.
    const { a, b, bPort, proxy, events } = await pair({ timeoutMs: 4000 });
    await until(() => a.state === 'Connected' && b.state === 'Connected');
    logged.length = 0;
    proxy.silence(); // the old connection goes silent, as after a power loss
    a.stop();
    const restarted = new PeerLink({ hello: () => hello('a'), listen: { host: '127.0.0.1', port: 0 }, peer: { host: '127.0.0.1', port: bPort }, peerName: 'b', timeoutMs: 4000, log });
    cleanups.push(() => restarted.stop());
    const t0 = Date.now();
    await restarted.start();
    await until(() => b.peer?.boot === restarted.bootId && restarted.state === 'Connected');
    expect(Date.now() - t0).toBeLessThan(3500);
    expect(logged).toContain('the live peer link stopped answering; a new connection from the peer replaces it');
    expect(logged).not.toContain('peer silent past the timeout, dropping the link');
    expect(events).toContain('b down');
  });
});

describe('backpressure', () => {
  /** Frames b was handed and has not given back, in arrival order. */
  const keeper = () => {
    const kept: Array<{ id: bigint; body: Buffer }> = [];
    const ids: bigint[] = [];
    return { kept, ids, onFrame: (h: FrameHeader, body: Buffer) => (ids.push(h.id), kept.push({ id: h.id, body })) };
  };
  /** The window must pass with nothing to poll for: how long b's socket gets to read more if it would. */
  const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('a receiver stops taking frames at its limit, stays linked while held past the timeout, and takes the rest in order as it gives frames back', async () => {
    const k = keeper();
    const inWork: number[] = [];
    const { a, b } = await pair({ bLimits: { workFrames: 4 }, bOnFrame: (h, body) => (k.onFrame(h, body), inWork.push(b.counters.framesInWork)) });
    await until(() => a.state === 'Connected' && b.state === 'Connected');
    await settle(500); // heartbeats both ways: link frames are never in work
    expect(b.counters).toMatchObject({ framesInWork: 0, receivePauses: 0 });
    for (let id = 1n; id <= 20n; id++) a.send(PeerMsg.FLUSH, id);
    await until(() => b.counters.receivePauses === 1);
    await settle(1200); // three link timeouts: b reads nothing meanwhile, and nobody drops the link
    expect(k.ids).toEqual([1n, 2n, 3n, 4n]);
    expect(b.counters.framesInWork).toBe(4);
    expect([a.state, b.state]).toEqual(['Connected', 'Connected']);
    while (k.ids.length < 20) {
      const given = k.kept.splice(0);
      for (const f of given) b.release(f.body);
      await until(() => k.kept.length > 0 || k.ids.length === 20, 2000);
    }
    expect(k.ids).toEqual(Array.from({ length: 20 }, (_, i) => BigInt(i + 1)));
    expect(Math.max(...inWork)).toBe(4); // it stopped again at every limit
    for (const f of k.kept.splice(0)) b.release(f.body);
    expect(b.counters).toMatchObject({ framesInWork: 0, bytesInWork: 0 });
    expect([a.state, b.state]).toEqual(['Connected', 'Connected']);
  });

  it('a frame larger than the limit goes through alone once nothing else is in work', async () => {
    const k = keeper();
    const inWorkAtArrival: number[] = [];
    const { a, b } = await pair({
      bLimits: { workBytes: 64 * 1024 },
      bOnFrame: (h, body) => (k.onFrame(h, body), inWorkAtArrival.push(b.counters.framesInWork)),
    });
    await until(() => a.state === 'Connected' && b.state === 'Connected');
    a.send(PeerMsg.WRITE, 1n, Buffer.alloc(1024));
    a.send(PeerMsg.WRITE, 2n, Buffer.alloc(1024 * 1024, 2)); // 16 times the limit
    a.send(PeerMsg.WRITE, 3n, Buffer.alloc(1024));
    await until(() => b.counters.receivePauses === 1);
    await settle(100);
    expect(k.ids).toEqual([1n]); // the large one waits for the small one
    b.release(k.kept.shift()!.body);
    await until(() => k.ids.length === 2);
    await settle(100);
    expect(k.ids).toEqual([1n, 2n]); // and the next waits for the large one
    expect(k.kept[0]!.body.equals(Buffer.alloc(1024 * 1024, 2))).toBe(true);
    b.release(k.kept.shift()!.body);
    await until(() => k.ids.length === 3);
    expect(inWorkAtArrival).toEqual([1, 1, 1]); // each one alone in work
    expect(b.counters.bytesInWork).toBe(1024);
  });

  it('a sender whose peer reads nothing resets the link: at once past the queue cap, or once nothing has left for the stall time', async () => {
    for (const [aLimits, why] of [
      [{ queuedBytes: 4 * 1024 * 1024 }, /bytes queued for the peer \(limit 4194304\)/],
      [{}, /the peer took none of \d+ queued bytes for \d+ ms/],
    ] as const) {
      // b holds the first frame and never gives it back: from then on it reads nothing.
      const { a, b, reasons } = await pair({ aLimits, aSendStallMs: 400, bLimits: { workFrames: 1 }, bOnFrame: () => undefined });
      await until(() => a.state === 'Connected' && b.state === 'Connected');
      for (let id = 1n; id <= 64n; id++) a.send(PeerMsg.WRITE, id, Buffer.alloc(1024 * 1024));
      await until(() => reasons.length > 0, 3000);
      expect(reasons[0]).toMatch(/^the peer does not read what this node sends: /);
      expect(reasons[0]).toMatch(why);
      for (const c of cleanups.splice(0)) await c();
    }
  });
});
