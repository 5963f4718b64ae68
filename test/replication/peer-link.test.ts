// Two peer links on loopback, the dialer going through a proxy that the test cuts and restores.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { HelloFields } from '../../src/replication/hello.js';
import { PeerLink, type PeerLinkOptions } from '../../src/replication/peer-link.js';
import { PeerPsk, type PeerTls } from '../../src/replication/peer-tls.js';
import { PeerX509 } from '../../src/replication/peer-x509.js';
import { issueCertificate, makeCa, type Ca } from '../../src/security/keygen-ca.js';
import type { LinkLimits } from '../../src/replication/link-limits.js';
import { encodeFrame, encodeWriteHeader, PEER_VERSION, PeerMsg, type FrameHeader } from '../../src/replication/peer-protocol.js';
import { freePort } from '../support/processes.js';
import { until } from '../support/cluster.js';
import { TcpProxy } from '../support/tcp-proxy.js';

/** Log messages of both links (and the whole records), so tests can wait for what happened instead of sleeping. */
const logged: string[] = [];
const records: Array<Record<string, unknown>> = [];
const log = pino({ level: 'debug' }, { write: (line: string) => void logged.push(records[records.push(JSON.parse(line)) - 1]!.msg as string) });
const gen = { current: '0123456789abcdef', bitmap: '0000000000000000', history: ['0000000000000000', '0000000000000000'] as [string, string] };
const hello = (node: string, over: Partial<HelloFields> = {}): HelloFields => ({
  version: PEER_VERSION,
  cluster: 'hospital',
  node,
  volumes: [{ name: 'vol0', size: 2 ** 30, generation: gen, state: 'UpToDate' as const, dirty: false, checksum: false, dirtyBytes: 0, trackingSince: 0 }],
  ...over,
});

/** Each node's transport for the links made now (set by each describe.each block below). */
let transport: (node: 'a' | 'b') => PeerTls | undefined = () => undefined;

/** Mutual x509: the cluster CA, and each node's certificate from it (made once, before the tests). */
let ca: Ca;
const x509: Partial<Record<'a' | 'b', PeerX509>> = {};
/** Node `node`'s end, with a certificate for `names` (default: its own name) from `issuer` (default: the cluster CA). */
async function x509End(node: 'a' | 'b', names: string = node, issuer: Ca = ca, trusted: Ca = ca): Promise<PeerX509> {
  const own = await issueCertificate(issuer, { node: names, hosts: ['127.0.0.1'] });
  return new PeerX509({ ca: Buffer.from(trusted.cert), cert: Buffer.from(own.cert), key: Buffer.from(own.key) }, node === 'a' ? 'b' : 'a');
}
beforeAll(async () => {
  ca = await makeCa();
  x509.a = await x509End('a');
  x509.b = await x509End('b');
});

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

/** Node b listens; node a (sorts first, so it dials) reaches b through a proxy. */
type Settle = NonNullable<PeerLinkOptions['settle']>;
async function pair(opts: { aTls?: PeerTls | null; bTls?: PeerTls | null; record?: boolean; bHello?: HelloFields; timeoutMs?: number; aSendStallMs?: number; aLimits?: Partial<LinkLimits>; bLimits?: Partial<LinkLimits>; bOnFrame?: (h: FrameHeader, body: Buffer) => void; aSettle?: Settle; bSettle?: Settle; aHoldDial?: () => string | undefined } = {}) {
  const bPort = await freePort();
  const proxy = new TcpProxy({ host: '127.0.0.1', port: bPort });
  await proxy.start();
  const events: string[] = [];
  const frames: number[] = [];
  const reasons: string[] = [];
  // null: plain, whatever the block's transport.
  const b = new PeerLink({
    tls: opts.bTls === undefined ? transport('b') : (opts.bTls ?? undefined),
    hello: () => opts.bHello ?? hello('b'),
    listen: { host: '127.0.0.1', port: bPort },
    peer: { host: '127.0.0.1', port: 1 }, // b never dials
    peerName: 'a',
    timeoutMs: opts.timeoutMs ?? 400,
    log: log.child({ node: 'b' }),
    limits: opts.bLimits,
    onConnected: () => events.push('b up'),
    onDisconnected: () => events.push('b down'),
    onFrame: opts.bOnFrame ?? ((h) => frames.push(h.type)),
    settle: opts.bSettle,
  });
  const a = new PeerLink({
    tls: opts.aTls === undefined ? transport('a') : (opts.aTls ?? undefined),
    hello: () => hello('a'),
    listen: { host: '127.0.0.1', port: 0 },
    peer: { host: '127.0.0.1', port: proxy.port },
    peerName: 'b',
    timeoutMs: opts.timeoutMs ?? 400,
    log: log.child({ node: 'a' }),
    limits: opts.aLimits,
    sendStallMs: opts.aSendStallMs,
    onConnected: () => events.push('a up'),
    onDisconnected: (reason) => (events.push('a down'), reasons.push(reason)),
    settle: opts.aSettle,
    holdDial: opts.aHoldDial,
  });
  cleanups.push(() => a.stop(), () => b.stop(), () => proxy.stop());
  proxy.record = opts.record ?? false;
  await b.start();
  await a.start();
  return { a, b, proxy, events, frames, reasons, bPort };
}

// Every behaviour, on a plain link, a TLS-PSK one and a mutual x509 one (the same frames through another transport).
const psk = new PeerPsk(randomBytes(32));
describe.each([
  ['plain', () => undefined],
  ['TLS-PSK', () => psk],
  ['mutual x509', (node: 'a' | 'b') => x509[node]],
] as const)('%s', (_mode, secure: (node: 'a' | 'b') => PeerTls | undefined) => {
  beforeAll(() => void (transport = secure));
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
    /** A raw connection; with the link's key when there is one, unless `plain`. */
    const raw = (port: number, localAddress = '127.0.0.1', plain = false) =>
      new Promise<{ s: net.Socket; closed: Promise<void>; got: Buffer[] }>((res, rej) => {
        const keyed = plain ? undefined : transport('a');
        const s = keyed ? keyed.connect({ port, host: '127.0.0.1', localAddress }) : net.connect({ port, host: '127.0.0.1', localAddress });
        const got: Buffer[] = [];
        s.on('data', (d) => got.push(d));
        s.on('error', () => undefined);
        const closed = new Promise<void>((r) => s.once('close', () => r()));
        s.once(keyed ? 'secureConnect' : 'connect', () => res({ s, closed, got }));
        s.once('error', rej);
      });
    const asA = (boot: string) => encodeFrame(PeerMsg.HELLO, 0n, Buffer.from(JSON.stringify({ ...hello('a'), boot })));

    it('an impostor with a fresh boot id is refused while the live link answers; a foreign host at once', async () => {
      const { a, b, bPort, events } = await pair();
      await until(() => a.state === 'Connected' && b.state === 'Connected');
      const foreign = await raw(bPort, '127.0.0.2', true); // refused before any TLS
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
      const restarted = new PeerLink({ tls: transport('a'), hello: () => hello('a'), listen: { host: '127.0.0.1', port: 0 }, peer: { host: '127.0.0.1', port: bPort }, peerName: 'b', timeoutMs: 4000, log });
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
        // b holds the first frame and never gives it back: from then on it reads nothing. The
        // dead-peer timeout is well past the stall time: a loaded box (or encrypting 64 MiB in one
        // turn, on a TLS link) can delay a's reading of b's PINGs, and only the stall is tested here.
        const { a, b, reasons } = await pair({ aLimits, aSendStallMs: 400, timeoutMs: 1600, bLimits: { workFrames: 1 }, bOnFrame: () => undefined });
        await until(() => a.state === 'Connected' && b.state === 'Connected');
        for (let id = 1n; id <= 64n; id++) a.send(PeerMsg.WRITE, id, Buffer.alloc(1024 * 1024));
        await until(() => reasons.length > 0, 3000);
        expect(reasons[0]).toMatch(/^the peer does not read what this node sends: /);
        expect(reasons[0]).toMatch(why);
        for (const c of cleanups.splice(0)) await c();
      }
    });
  });
});

describe('TLS-PSK', () => {
  const key = new PeerPsk(randomBytes(32));
  const messages = (msg: string) => records.filter((r) => r.msg === msg);

  it('what crosses the wire is encrypted: no cluster id, node or volume name, no frame in clear', async () => {
    for (const [aTls, bTls] of [[null, null], [key, key], [x509.a!, x509.b!]]) {
      const secure = aTls !== null;
      const { a, b, proxy, frames } = await pair({ aTls, bTls, record: true });
      await until(() => a.state === 'Connected' && b.state === 'Connected');
      a.send(PeerMsg.WRITE, 1n, [encodeWriteHeader({ volume: 0, flags: 0, offset: 0, digest: 0n }), Buffer.from('patient-record-0001')]);
      await until(() => frames.includes(PeerMsg.WRITE)); // so it has crossed the proxy
      expect(proxy.recordings).toHaveLength(1);
      const wire = Buffer.concat([...proxy.recordings[0]!.toUpstream, ...proxy.recordings[0]!.toClient]);
      const magic = Buffer.from('NBMR');
      for (const clear of ['hospital', 'vol0', 'patient-record-0001', '"node"']) expect(wire.includes(clear), `${clear} ${secure ? 'with' : 'without'} TLS`).toBe(!secure);
      expect(wire.includes(magic)).toBe(!secure);
      for (const c of cleanups.splice(0)) await c();
    }
  });

  it('a peer with another key is refused on both sides, each saying so, and never links', async () => {
    records.length = 0;
    const { a, b, events, proxy } = await pair({ aTls: new PeerPsk(randomBytes(32)), bTls: key, record: true });
    // a retries every 250 ms (each try a connection through the proxy): the log says it once a minute, not each time.
    await until(() => proxy.recordings.length >= 4);
    expect(messages('peer-link TLS handshake failed')).toHaveLength(2);
    const reasons = messages('peer-link TLS handshake failed').map((r) => String(r.reason));
    expect(reasons).toContainEqual(expect.stringMatching(/does not hold this cluster secret/)); // b, the listener
    expect(reasons).toContainEqual(expect.stringMatching(/different cluster secrets/)); // a, the dialer
    expect([a.state, b.state]).toEqual(['Connecting', 'Connecting']);
    expect(events).toEqual([]);
  });

  it('a plain node and a TLS node never link, and both sides say why', async () => {
    for (const [aTls, bTls, aSays, bSays] of [
      [null, key, ['the peer closed the connection before answering HELLO', /require TLS/], ['peer-link TLS handshake failed', /not TLS/]],
      [key, null, ['peer-link TLS handshake failed', /hung up during the TLS handshake/], ['refused a peer-link connection', /speaks TLS.*this node neither/]],
    ] as const) {
      records.length = 0;
      const { a, b } = await pair({ aTls, bTls });
      await until(() => messages(aSays[0]).length > 0 && messages(bSays[0]).length > 0);
      expect(String(messages(aSays[0])[0]!.reason ?? messages(aSays[0])[0]!.hint)).toMatch(aSays[1]);
      expect(String(messages(bSays[0])[0]!.reason)).toMatch(bSays[1]);
      expect([a.state, b.state]).toEqual(['Connecting', 'Connecting']);
      for (const c of cleanups.splice(0)) await c();
    }
  });

  it('without a key, a stranger gets no byte and the live link stays; with a wrong key, a handshake failure', async () => {
    const { a, b, bPort, events } = await pair({ aTls: key, bTls: key });
    await until(() => a.state === 'Connected' && b.state === 'Connected');
    const strangers = [
      ['a plain HELLO', encodeFrame(PeerMsg.HELLO, 0n, Buffer.from(JSON.stringify({ ...hello('a'), boot: 'feedfacefeedface' })))],
      ['garbage', Buffer.alloc(4096, 0x5a)],
      ['nothing', Buffer.alloc(0)],
    ] as const;
    for (const [what, bytes] of strangers) {
      const s = net.connect(bPort, '127.0.0.1');
      const got: Buffer[] = [];
      s.on('data', (d) => got.push(d));
      s.on('error', () => undefined);
      await new Promise((r) => s.once('connect', r));
      s.write(bytes);
      await new Promise((r) => s.once('close', r)); // within the timeout at the latest
      expect(Buffer.concat(got).includes('hospital'), what).toBe(false);
    }
    const wrong = new PeerPsk(randomBytes(32)).connect({ port: bPort, host: '127.0.0.1', localAddress: '127.0.0.1' });
    const failed = await new Promise<Error>((r) => wrong.once('error', r));
    expect(failed.message).toMatch(/alert illegal parameter/);
    expect(events.filter((e) => e.endsWith('down'))).toEqual([]);
    expect([a.state, b.state]).toEqual(['Connected', 'Connected']);
  });
});

describe('mutual x509', () => {
  const messages = (msg: string) => records.filter((r) => r.msg === msg);
  const TLS_FAILED = 'peer-link TLS handshake failed';
  const HUNG_UP = 'the peer closed the connection before answering HELLO';
  /** Why node `node` logged `msg` (the records' reason, or hint). */
  const why = (node: 'a' | 'b', msg: string) => messages(msg).filter((r) => r.node === node).map((r) => String(r.reason ?? r.hint));

  it('a certificate of another CA, for another node, none at all, or a TLS-PSK or plain peer: refused with one line saying so; nothing links, no frame reaches a volume', async () => {
    const other = await makeCa();
    type Says = readonly [string, RegExp];
    const cases: Array<[string, PeerTls | null, PeerTls | null, Says | undefined, Says | undefined]> = [
      // The dialer refuses the listener's certificate first, and hangs up.
      ['a node of another cluster (another CA)', await x509End('a', 'a', other, other), x509.b!, [TLS_FAILED, /not signed by this cluster's CA/], [TLS_FAILED, /hung up .*refused this node's certificate/]],
      ['a certificate of another CA, trusting ours', await x509End('a', 'a', other), x509.b!, [HUNG_UP, /may not accept this node's certificate/], [TLS_FAILED, /not signed by this cluster's CA/]],
      ['the dialer with a certificate for another node', await x509End('a', 'c'), x509.b!, [HUNG_UP, /may not accept this node's certificate/], [TLS_FAILED, /is for CN=c .*not the peer node "a"/]],
      ['the listener with a certificate for another node', x509.a!, await x509End('b', 'a'), [TLS_FAILED, /is for CN=a .*not the peer node "b"/], undefined],
      ['a TLS-PSK dialer', psk, x509.b!, [TLS_FAILED, /a certificate instead of the pre-shared key/], [TLS_FAILED, /hung up .*has no security\.peerCertificates/]],
      ['a TLS-PSK listener', x509.a!, psk, [TLS_FAILED, /security\.clusterSecret/], [TLS_FAILED, /security\.peerCertificates/]],
      ['a plain dialer', null, x509.b!, [HUNG_UP, /require TLS/], [TLS_FAILED, /not TLS/]],
      ['a plain listener', x509.a!, null, [TLS_FAILED, /hung up during the TLS handshake/], ['refused a peer-link connection', /speaks TLS/]],
    ];
    for (const [what, aTls, bTls, aSays, bSays] of cases) {
      records.length = 0;
      const { a, b, events, frames, proxy } = await pair({ aTls, bTls, record: true });
      // a retries every 250 ms: a few tries, each logged once a minute at most.
      await until(() => proxy.recordings.length >= 3 && (aSays === undefined || why('a', aSays[0]).length > 0) && (bSays === undefined || why('b', bSays[0]).length > 0), 5000);
      if (aSays) expect(why('a', aSays[0]), `${what}: a`).toEqual([expect.stringMatching(aSays[1])]);
      if (bSays) expect(why('b', bSays[0]), `${what}: b`).toEqual([expect.stringMatching(bSays[1])]);
      expect([a.state, b.state], what).toEqual(['Connecting', 'Connecting']);
      expect(events, what).toEqual([]);
      expect(frames, what).toEqual([]);
      expect(records.filter((r) => r.msg === 'peer link connected'), what).toEqual([]);
      for (const c of cleanups.splice(0)) await c();
    }
  });

  it('a certificate close to its end date is reported at start, with the days left', async () => {
    records.length = 0;
    const soon = await issueCertificate(ca, { node: 'a', hosts: [] }, 10);
    const link = new PeerLink({ tls: new PeerX509({ ca: Buffer.from(ca.cert), cert: Buffer.from(soon.cert), key: Buffer.from(soon.key) }, 'b'), hello: () => hello('a'), listen: { host: '127.0.0.1', port: 0 }, peer: { host: '127.0.0.1', port: 1 }, peerName: 'b', log });
    cleanups.push(() => link.stop());
    await link.start();
    const warned = messages("this node's peer-link certificate expires soon: make a new one (docs/SECURITY.md, rotating certificates)");
    expect(warned).toHaveLength(1);
    expect(warned[0]!.daysLeft).toBe(9); // 10 days from its making, less the moments since
    // A certificate of 5 years (keygen's): only the info line, with its end date.
    records.length = 0;
    const far = new PeerLink({ tls: x509.a!, hello: () => hello('a'), listen: { host: '127.0.0.1', port: 0 }, peer: { host: '127.0.0.1', port: 1 }, peerName: 'b', log });
    cleanups.push(() => far.stop());
    await far.start();
    expect(messages('the peer link is authenticated and encrypted')[0]!.expires).toBe(x509.a!.expires.toISOString());
    expect(records.filter((r) => String(r.msg).includes('expires soon'))).toEqual([]);
  });

  it('a client with no certificate gets no byte of a frame and is refused; the live link stays', async () => {
    const { a, b, bPort, events } = await pair({ aTls: x509.a!, bTls: x509.b! });
    await until(() => a.state === 'Connected' && b.state === 'Connected');
    records.length = 0;
    const bare = tls.connect({ port: bPort, host: '127.0.0.1', ca: ca.cert, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
    const got: Buffer[] = [];
    bare.on('data', (d: Buffer) => got.push(d));
    bare.on('error', () => undefined);
    await new Promise((r) => bare.once('close', r));
    await until(() => messages(TLS_FAILED).length > 0);
    expect(String(messages(TLS_FAILED)[0]!.reason)).toMatch(/presented no certificate/);
    expect(Buffer.concat(got).includes('hospital')).toBe(false);
    expect(events.filter((e) => e.endsWith('down'))).toEqual([]);
    expect([a.state, b.state]).toEqual(['Connected', 'Connected']);
  });
});

describe('a volume change settled before the link comes up (settle, holdDial: volume-ops.ts)', () => {
  it('refusals say why and are logged as settling; a listener shows its HELLO first only with answer; the link comes up once nothing is to settle', async () => {
    type Verdict = ReturnType<Settle>;
    let bVerdict: Verdict = { refuse: 'b waits for a to finish it', answer: false };
    let aVerdict: Verdict = { refuse: 'a is finishing it', answer: false };
    const aSaw: string[] = [];
    const bSaw: string[] = [];
    const { a, b, events } = await pair({
      bSettle: (_ours, theirs, mismatch) => (bSaw.push(`${theirs.node} ${mismatch}`), bVerdict),
      aSettle: (_ours, theirs, mismatch) => (aSaw.push(`${theirs.node} ${mismatch}`), aVerdict),
    });
    // Without answer, b's HELLO never reaches a: a's settle is never asked.
    await until(() => records.some((r) => r.node === 'b' && r.msg === 'refusing the peer link until a volume change is settled' && r.reason === 'b waits for a to finish it'));
    expect(bSaw[0]).toBe('a undefined'); // asked for a matching HELLO too (mismatch undefined)
    expect(aSaw).toEqual([]);
    // With answer, a sees b's HELLO before the refusal, and refuses in turn (a warning, not an error).
    bVerdict = { refuse: 'b waits for a to finish it', answer: true };
    await until(() => aSaw.length > 0);
    expect(aSaw[0]).toBe('b undefined');
    await until(() => records.some((r) => r.node === 'a' && r.msg === 'refusing the peer link until a volume change is settled' && r.reason === 'a is finishing it' && r.level === 40));
    expect(events).toEqual([]);
    // A refusal an operator must repair is logged as a mismatch is.
    aVerdict = { refuse: 'a could not finish it', answer: false, manual: true };
    await until(() => records.some((r) => r.node === 'a' && r.msg === 'refusing the peer link' && r.reason === 'a could not finish it' && r.level === 50));
    expect(events).toEqual([]);
    aVerdict = undefined;
    bVerdict = undefined;
    await until(() => a.state === 'Connected' && b.state === 'Connected');
  });

  it('a dialer with a change half applied does not dial (its HELLO would list it either way) until it is done', async () => {
    let held: string | undefined = 'applying delete volume v';
    const bSaw: string[] = [];
    const { a, b } = await pair({ aHoldDial: () => held, bSettle: (_ours, theirs) => void bSaw.push(theirs.node) });
    await until(() => records.filter((r) => r.node === 'a' && r.msg === 'not dialing the peer yet' && r.reason === 'applying delete volume v').length >= 3);
    expect(bSaw).toEqual([]);
    expect([a.state, b.state]).toEqual(['Connecting', 'Connecting']);
    held = undefined;
    await until(() => a.state === 'Connected' && b.state === 'Connected');
    expect(bSaw).toEqual(['a']);
  });
});
