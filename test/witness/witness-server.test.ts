// The witness process's HTTP side, in-process: grants through the real client, a restart keeps
// the grant (state file), a damaged state file stops it from starting, bad requests get clear
// errors and change nothing.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import { WitnessClient } from '../../src/witness/witness-client.js';
import { MAX_CLUSTERS, startWitness } from '../../src/witness/witness-server.js';

const log = createLogger('silent');
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function witness(state: string): Promise<{ server: http.Server; port: number; client: (node: string) => WitnessClient }> {
  const server = await startWitness({ host: '127.0.0.1', port: 0 }, state, log);
  cleanups.push(() => new Promise((r) => server.close(r)));
  const port = (server.address() as { port: number }).port;
  return { server, port, client: (node) => new WitnessClient({ host: '127.0.0.1', port }, 'a+b', node, 2000) };
}

/** Sends raw bytes, returns the status line of the answer. */
function rawStatusLine(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(request));
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString()));
    s.on('close', () => resolve(got.split('\r\n', 1)[0]!));
    s.on('error', reject);
    s.setTimeout(5000, () => s.destroy(new Error('no answer in 5 s')));
  });
}

function tempState(): string {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-witness-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'witness.json');
}

describe('witness server', () => {
  it('grants one node, refuses the other, and still knows the holder after a restart', async () => {
    const state = tempState();
    const w = await witness(state);
    expect(await w.client('a').claim()).toMatchObject({ granted: true, holder: 'a' });
    expect(await w.client('b').claim()).toMatchObject({ granted: false, holder: 'a' });
    await new Promise((r) => w.server.close(r));
    const again = await witness(state);
    expect(await again.client('b').claim()).toMatchObject({ granted: false, holder: 'a' });
    expect(await again.client('a').release()).toMatchObject({ holder: null });
    expect(await again.client('b').claim()).toMatchObject({ granted: true, holder: 'b' });
    expect(await (await fetch(`http://127.0.0.1:${again.port}/status`)).json()).toMatchObject({ grants: { 'a+b': { holder: 'b' } } });
  });

  it('is reached on IPv6 and on ports fetch would refuse (6000)', async () => {
    const v6 = await startWitness({ host: '::1', port: 0 }, tempState(), log);
    cleanups.push(() => new Promise((r) => v6.close(r)));
    const port = (v6.address() as { port: number }).port;
    expect(await new WitnessClient({ host: '::1', port }, 'a+b', 'a', 2000).claim()).toMatchObject({ granted: true });
    let bad: http.Server;
    try {
      bad = await startWitness({ host: '127.0.0.1', port: 6000 }, tempState(), log);
    } catch {
      return void console.warn('port 6000 is busy here; the bad-port half of this test did not run');
    }
    cleanups.push(() => new Promise((r) => bad.close(r)));
    expect(await new WitnessClient({ host: '127.0.0.1', port: 6000 }, 'a+b', 'b', 2000).claim()).toMatchObject({ granted: true });
  });

  it('a witness that does not answer in time counts as absent', async () => {
    const held: net.Socket[] = [];
    const silent = net.createServer((s) => void held.push(s)); // accepts, never answers
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => (held.forEach((s) => s.destroy()), silent.close(r))));
    const port = (silent.address() as { port: number }).port;
    const started = Date.now();
    await expect(new WitnessClient({ host: '127.0.0.1', port }, 'a+b', 'a', 300).claim()).rejects.toThrow(/no answer in 300 ms/);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('refuses to start on a damaged state file rather than forget a grant', async () => {
    const state = tempState();
    writeFileSync(state, '{"a+b": {"holder": ');
    await expect(startWitness({ host: '127.0.0.1', port: 0 }, state, log)).rejects.toThrow(/damaged.*refusing to start/);
  });

  it('answers bad requests with an error and changes nothing', async () => {
    const w = await witness(tempState());
    const post = (path: string, body: string) => fetch(`http://127.0.0.1:${w.port}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    expect((await post('/claim', 'not json')).status).toBe(400);
    expect((await post('/claim', JSON.stringify({ cluster: 'a+b' }))).status).toBe(400);
    expect((await post('/claim', JSON.stringify({ cluster: 'a+b', node: 'a', extra: 1 }))).status).toBe(400);
    for (const brandNew of ['no', 0, null]) expect((await post('/release', JSON.stringify({ cluster: 'a+b', node: 'a', brandNew }))).status).toBe(400);
    expect((await post('/grant-me-everything', '{}')).status).toBe(404);
    // Request targets `new URL` cannot parse (the fuzzer's find: they used to end the process).
    for (const target of ['//', '//x:99999/', 'http://[bad/']) expect(await rawStatusLine(w.port, `GET ${target} HTTP/1.0\r\n\r\n`)).toMatch(/^HTTP\/1\.[01] 404/);
    await expect(post('/claim', 'x'.repeat(100_000))).rejects.toThrow(); // oversized: connection dropped
    expect(await (await fetch(`http://127.0.0.1:${w.port}/status`)).json()).toEqual({ grants: {}, hasData: [] });
    expect(await w.client('a').claim()).toMatchObject({ granted: true }); // still serving
  });

  it('refuses what a web page can send: an Origin header (403), a non-JSON content type (415); nothing changes', async () => {
    const w = await witness(tempState());
    const body = JSON.stringify({ cluster: 'a+b', node: 'a' });
    expect((await fetch(`http://127.0.0.1:${w.port}/claim`, { method: 'POST', headers: { 'content-type': 'application/json', origin: 'http://evil.example' }, body })).status).toBe(403);
    expect((await fetch(`http://127.0.0.1:${w.port}/claim`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body })).status).toBe(415);
    expect(await (await fetch(`http://127.0.0.1:${w.port}/status`)).json()).toEqual({ grants: {}, hasData: [] });
  });

  it(`without secrets, records at most ${MAX_CLUSTERS} clusters: one more is refused (503), the file stays as it was, the others are served`, async () => {
    const state = tempState();
    const grants = Object.fromEntries(Array.from({ length: MAX_CLUSTERS }, (_, i) => [`c${i}`, { holder: 'a', since: '2026-01-01T00:00:00.000Z' }]));
    writeFileSync(state, JSON.stringify(grants));
    const w = await witness(state);
    const as = (cluster: string, node: string) => new WitnessClient({ host: '127.0.0.1', port: w.port }, cluster, node, 2000);
    const full = new RegExp(`witness answered 503: .*knows ${MAX_CLUSTERS} clusters already`);
    await expect(as('one-more', 'a').claim()).rejects.toThrow(full);
    await expect(as('one-more', 'a').release()).rejects.toThrow(full); // a release would record it too
    expect(readFileSync(state, 'utf8')).toBe(JSON.stringify(grants));
    expect(await as('c7', 'b').claim()).toMatchObject({ granted: false, holder: 'a' });
    expect(await as('c7', 'a').release()).toMatchObject({ holder: null });
    // c7 stays recorded (it holds data): no room for another cluster.
    await expect(as('one-more', 'a').claim()).rejects.toThrow(full);
    expect(await as('c7', 'b').claim()).toMatchObject({ granted: true, holder: 'b' });
  });

  it('remembers across a restart that a cluster holds data: a brand-new copy is refused, the first of a new cluster granted; a state file from before the flag counts its grants as data', async () => {
    const state = tempState();
    const w = await witness(state);
    expect(await w.client('a').claim(true)).toMatchObject({ granted: true, holder: 'a' }); // a new cluster's first node
    expect(await w.client('a').release()).toMatchObject({ holder: null }); // in sync with b
    await new Promise((r) => w.server.close(r));
    expect(JSON.parse(readFileSync(state, 'utf8'))).toEqual({ 'a+b': { hasData: true } });
    const again = await witness(state);
    const before = readFileSync(state, 'utf8');
    const refused = await again.client('b').claim(true); // b on a replaced disk
    expect(refused).toMatchObject({ granted: false, holder: null });
    expect(refused.reason).toMatch(/brand-new copy cannot serve alone: this cluster holds data on its peer/);
    expect(readFileSync(state, 'utf8')).toBe(before);
    expect(await (await fetch(`http://127.0.0.1:${again.port}/status`)).json()).toEqual({ grants: {}, hasData: ['a+b'] });
    expect(await again.client('b').claim(false)).toMatchObject({ granted: true, holder: 'b' }); // a copy with data may
    await new Promise((r) => again.server.close(r));

    const old = tempState();
    writeFileSync(old, JSON.stringify({ 'a+b': { holder: 'a', since: '2026-01-01T00:00:00.000Z' } }));
    const upgraded = await witness(old);
    expect(await upgraded.client('a').claim(true)).toMatchObject({ granted: false, holder: 'a' });
    expect(await upgraded.client('a').claim()).toMatchObject({ granted: true, holder: 'a' });
  });
});
