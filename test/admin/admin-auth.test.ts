// The admin endpoint of a real node with an admin token: actions need the token, a JSON content
// type and no Origin; reads stay open; the CLI finds address and token through the config.
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keygen } from '../../src/security/keygen.js';
import { pairPorts, until, volumeStatus, writePairConfig, type PairPorts } from '../support/cluster.js';
import { run } from '../support/fixture.js';
import { cliPath, startClusterNode, type RunningServer } from '../support/processes.js';

const wrongToken = 'ab'.repeat(32);

/** One raw request (node:http, so every header is ours): status, headers, body. */
function request(port: number, method: string, path: string, headers: Record<string, string>, body = ''): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) }, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error('no answer in 5 s')));
    req.end(body);
  });
}

describe('admin endpoint with a token', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-admin-auth-'));
  let p: PairPorts;
  let config: string;
  let token: string;
  let node: RunningServer;
  beforeAll(async () => {
    p = await pairPorts();
    const keys = keygen(dir, 'refuse');
    token = readFileSync(keys.adminToken, 'utf8').trim();
    // Only node a runs: its peer never comes, which does not matter to its admin endpoint.
    config = writePairConfig(join(dir, 'cluster.json'), p, '16M', p.peerB, { security: { adminToken: 'admin.token' } });
    node = await startClusterNode(config, 'a');
  });
  afterAll(async () => {
    await node?.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  const alive = async () => node.proc.exitCode === null && (await volumeStatus(p.adminA)).disk !== undefined;

  it('refuses POST /stop without a token, with a wrong or malformed one (401), and the node keeps running', async () => {
    const json = { 'content-type': 'application/json' };
    const auths: Array<Record<string, string>> = [{}, { authorization: `Bearer ${wrongToken}` }, { authorization: 'Bearer 1234' }, { authorization: token }, { authorization: `Basic ${token}` }];
    for (const auth of auths) {
      const res = await request(p.adminA, 'POST', '/stop', { ...json, ...auth }, '{}');
      expect(res.status, JSON.stringify(auth)).toBe(401);
      expect(res.headers['www-authenticate']).toBe('Bearer');
      expect(res.body).toMatch(/admin token/);
    }
    expect(await alive()).toBe(true);
    // Logged through the process's stdout, which may arrive after the answer.
    await until(() => node.logs.some((l) => l.msg === 'admin request refused' && l.status === 401), 5000);
  });

  it('refuses what a web page can send, even with the right token: an Origin header (403), a form content type or none (415)', async () => {
    const auth = { authorization: `Bearer ${token}` };
    expect((await request(p.adminA, 'POST', '/stop', { ...auth, 'content-type': 'application/json', origin: 'http://evil.example' }, '{}')).status).toBe(403);
    for (const type of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
      expect((await request(p.adminA, 'POST', '/stop', { ...auth, 'content-type': type }, 'a=b')).status, type).toBe(415);
    }
    expect((await request(p.adminA, 'POST', '/stop', auth)).status).toBe(415);
    // Reads from a page are refused too: status would tell it the cluster's layout.
    expect((await request(p.adminA, 'GET', '/status', { origin: 'http://evil.example' })).status).toBe(403);
    expect(await alive()).toBe(true);
  });

  it('leaves GET /status and /metrics open without a token', async () => {
    const status = await request(p.adminA, 'GET', '/status', {});
    expect(status.status).toBe(200);
    expect(JSON.parse(status.body)).toMatchObject({ node: 'a' });
    const metrics = await request(p.adminA, 'GET', '/metrics', {});
    expect(metrics.status).toBe(200);
    expect(metrics.body).toMatch(/nbd_mirror_volume_connection/);
  });

  it('drops an action whose body is over 1 KiB, and the node goes on', async () => {
    await expect(request(p.adminA, 'POST', '/stop', { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, `"${'x'.repeat(100_000)}"`)).rejects.toThrow();
    expect(await alive()).toBe(true);
  });

  it('the CLI finds address and token through --config/--node; --admin takes --token-file; wrong use is said in words', async () => {
    expect(await run(process.execPath, [cliPath, 'status', '--config', config, '--node', 'a'])).toMatch(/^node a {2}peer link \w+ {2}quorum/);
    // Past the token check: the node itself answers (nothing diverged to resolve).
    await expect(run(process.execPath, [cliPath, 'resolve', '--config', config, '--node', 'a', '--volume', 'vol0', '--discard', 'a'])).rejects.toThrow(/volume "vol0" has not diverged from the peer; nothing to resolve/);
    const wrongFile = join(dir, 'wrong.token');
    writeFileSync(wrongFile, `${wrongToken}\n`, { mode: 0o600 });
    await expect(run(process.execPath, [cliPath, 'stop', '--admin', `127.0.0.1:${p.adminA}`, '--token-file', wrongFile])).rejects.toThrow(/the admin endpoint refused the request: missing or wrong token \(see --config\/--token-file\)/);
    chmodSync(wrongFile, 0o644);
    await expect(run(process.execPath, [cliPath, 'stop', '--admin', `127.0.0.1:${p.adminA}`, '--token-file', wrongFile])).rejects.toThrow(/readable by others \(mode 644\): chmod 600/);
    await expect(run(process.execPath, [cliPath, 'stop', '--config', config])).rejects.toThrow(/--config needs --node NAME/);
    await expect(run(process.execPath, [cliPath, 'stop', '--config', config, '--node', 'c'])).rejects.toThrow(/node "c" is not in/);
    await expect(run(process.execPath, [cliPath, 'stop', '--config', config, '--node', 'a', '--admin', `127.0.0.1:${p.adminA}`])).rejects.toThrow(/cannot be used with option '--config/);
    await expect(run(process.execPath, [cliPath, 'stop'])).rejects.toThrow(/give --admin HOST:PORT, or --config FILE --node NAME/);
    expect(await alive()).toBe(true);
    // The right token: the node stops, as asked.
    expect(await run(process.execPath, [cliPath, 'stop', '--config', config, '--node', 'a'])).toMatch(/node a is stopping/);
    expect(node.proc.exitCode ?? (await new Promise((r) => node.proc.once('exit', r)))).toBe(0);
  });
});

describe('admin token files a node refuses to start with', () => {
  it('a missing or world-readable token file stops the node at start, naming the file and the fix', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-admin-key-'));
    try {
      const p = await pairPorts();
      const config = writePairConfig(join(dir, 'cluster.json'), p, '16M', p.peerB, { security: { adminToken: 'admin.token' } });
      await expect(startClusterNode(config, 'a')).rejects.toThrow(/cannot read security\.adminToken .*admin\.token.*nbd-mirror keygen/);
      writeFileSync(join(dir, 'admin.token'), `${wrongToken}\n`, { mode: 0o644 });
      await expect(startClusterNode(config, 'a')).rejects.toThrow(/security\.adminToken .*admin\.token is readable by others \(mode 644\): chmod 600/);
      writeFileSync(join(dir, 'admin.token'), 'not a key\n', { mode: 0o600 });
      chmodSync(join(dir, 'admin.token'), 0o600);
      await expect(startClusterNode(config, 'a')).rejects.toThrow(/is not 32 bytes as 64 hex digits/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
