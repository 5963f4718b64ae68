// A real witness process with --secrets: only requests signed with their cluster's secret move a
// grant; forged, replayed, stale and foreign requests are refused (and logged) and change
// nothing; unknown clusters cannot grow its state file; a state file it cannot write is answered
// 500 and the witness goes on.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpRequest } from '../../src/net/http-request.js';
import { keygen } from '../../src/security/keygen.js';
import { readKeyFile } from '../../src/security/key-file.js';
import { signatureHeaders } from '../../src/witness/request-signature.js';
import { WitnessClient } from '../../src/witness/witness-client.js';
import { until, witnessGrants } from '../support/cluster.js';
import { startWitnessProcess, type RunningServer } from '../support/processes.js';

const addr = (w: RunningServer) => ({ host: '127.0.0.1', port: w.port });

describe('witness with secrets', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-witness-auth-'));
  let secret: Buffer;
  let otherSecret: Buffer;
  let witness: RunningServer;
  const state = join(dir, 'state', 'witness.json');
  beforeAll(async () => {
    mkdirSync(join(dir, 'secrets'));
    mkdirSync(join(dir, 'state'));
    for (const cluster of ['a+b', 'ward-7']) {
      const keys = keygen(join(dir, cluster), 'refuse');
      copyFileSync(keys.clusterSecret, join(dir, 'secrets', `${cluster}.secret`));
    }
    secret = readKeyFile(join(dir, 'a+b', 'cluster.secret'), 'test');
    otherSecret = readKeyFile(join(dir, 'ward-7', 'cluster.secret'), 'test');
    witness = await startWitnessProcess(state, ['--secrets', join(dir, 'secrets')]);
  });
  afterAll(async () => {
    await witness?.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  const node = (name: string, key?: Buffer, cluster = 'a+b') => new WitnessClient(addr(witness), cluster, name, 2000, key);
  /** A POST as it goes on the wire: body and headers exactly as given. */
  const send = (path: string, body: string, headers: Record<string, string>) => httpRequest(addr(witness), 'POST', path, { jsonText: body, headers, timeoutMs: 2000 });
  const releaseBody = JSON.stringify({ cluster: 'a+b', node: 'a' });

  it('serves the nodes that hold the secret: claim, refuse the other, release', async () => {
    expect(await node('a', secret).claim()).toMatchObject({ granted: true, holder: 'a' });
    expect(await node('b', secret).claim()).toMatchObject({ granted: false, holder: 'a' });
    expect(await node('a', secret).release()).toMatchObject({ holder: null });
    expect(await witnessGrants(witness.port)).toEqual({});
  });

  it('refuses forged releases — unsigned, wrong secret, replayed, stale, signed for another path or cluster — and the grant stays', async () => {
    // A release the holder really sent, seen on the wire: replaying it later must not work.
    expect(await node('a', secret).claim()).toMatchObject({ granted: true });
    const seen = signatureHeaders(secret, 'POST', '/release', releaseBody);
    expect((await send('/release', releaseBody, seen)).status).toBe(200);
    expect(await node('a', secret).claim()).toMatchObject({ granted: true, holder: 'a' });
    const stateBefore = readFileSync(state, 'utf8');

    const forged: Array<[string, Record<string, string>, RegExp, string?]> = [
      ['unsigned', {}, /unsigned request/],
      ['wrong secret', signatureHeaders(otherSecret, 'POST', '/release', releaseBody), /wrong signature/],
      ['replayed', seen, /replayed request/],
      ['stale (signed 60 s ago)', signatureHeaders(secret, 'POST', '/release', releaseBody, Date.now() - 60_000), /s off the witness's clock/],
      ['from the future', signatureHeaders(secret, 'POST', '/release', releaseBody, Date.now() + 60_000), /s off the witness's clock/],
      ['a claim signature on a release', signatureHeaders(secret, 'POST', '/claim', releaseBody), /wrong signature/],
      ['another body under the signature', signatureHeaders(secret, 'POST', '/release', JSON.stringify({ cluster: 'a+b', node: 'b' })), /wrong signature/],
      ['malformed signature', { 'x-nbd-mirror-time': String(Date.now()), 'x-nbd-mirror-signature': 'zz' }, /unsigned request/],
    ];
    for (const [what, headers, why] of forged) {
      const res = await send('/release', releaseBody, headers);
      expect({ what, status: res.status, error: (JSON.parse(res.body) as { error: string }).error }).toMatchObject({ what, status: 401, error: expect.stringMatching(why) });
    }
    // Signed with the other cluster's own secret, but naming this cluster; and a cluster it has no secret for.
    expect(await node('a', otherSecret).release().catch((e: Error) => e.message)).toMatch(/witness answered 401: .*wrong signature/);
    expect(await node('a', secret, 'ward-9').release().catch((e: Error) => e.message)).toMatch(/witness answered 403: .*unknown cluster .*ward-9.*no secret for it/);

    expect(await witnessGrants(witness.port)).toEqual({ 'a+b': expect.objectContaining({ holder: 'a' }) });
    expect(readFileSync(state, 'utf8')).toBe(stateBefore);
    // Logged through the witness's stdout, which may arrive after the answer.
    await until(() => witness.logs.some((l) => l.msg === 'witness request refused' && l.cluster === 'a+b' && l.status === 401), 5000);
    expect(await node('a', secret).release()).toMatchObject({ holder: null }); // the real holder still can
  });

  it('a claim saying "not brand new" that its node did not sign — unsigned, wrong secret, or its body swapped under a brand-new claim\'s signature — is refused and changes nothing', async () => {
    // The cluster holds data (the pair was in sync): b, restarted on a replaced disk, is refused.
    expect(await node('a', secret).release()).toMatchObject({ holder: null });
    expect(await node('b', secret).claim(true)).toMatchObject({ granted: false, reason: expect.stringMatching(/brand-new copy cannot serve alone/) });
    const stateBefore = readFileSync(state, 'utf8');
    const lie = JSON.stringify({ cluster: 'a+b', node: 'b', brandNew: false });
    const truth = JSON.stringify({ cluster: 'a+b', node: 'b', brandNew: true });
    const forged: Array<[string, Record<string, string>, RegExp]> = [
      ['unsigned', {}, /unsigned request/],
      ['wrong secret', signatureHeaders(otherSecret, 'POST', '/claim', lie), /wrong signature/],
      ['the brand-new claim\'s signature', signatureHeaders(secret, 'POST', '/claim', truth), /wrong signature/],
    ];
    for (const [what, headers, why] of forged) {
      const res = await send('/claim', lie, headers);
      expect({ what, status: res.status, error: (JSON.parse(res.body) as { error: string }).error }).toMatchObject({ what, status: 401, error: expect.stringMatching(why) });
    }
    expect(readFileSync(state, 'utf8')).toBe(stateBefore);
    expect(await witnessGrants(witness.port)).toEqual({});
    expect(await node('b', secret).claim(true)).toMatchObject({ granted: false }); // still refused
  });

  it('a flood of claims for unknown clusters leaves the state file as it was', async () => {
    expect(await node('a', otherSecret, 'ward-7').claim()).toMatchObject({ granted: true });
    const before = readFileSync(state, 'utf8');
    const answers = await Promise.all(Array.from({ length: 500 }, (_, i) => node('a', secret, `flood-${i}`).claim().catch((e: Error) => e.message)));
    expect(answers.every((a) => typeof a === 'string' && /witness answered 403/.test(a))).toBe(true);
    expect(readFileSync(state, 'utf8')).toBe(before);
    expect(Object.keys(await witnessGrants(witness.port))).toEqual(['ward-7']);
    expect(await node('a', otherSecret, 'ward-7').release()).toMatchObject({ holder: null });
  });
});

describe('witness state file it cannot write', () => {
  it('answers 500, stays up, and keeps the grant as it was until the file can be written again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-witness-eio-'));
    const stateDir = join(dir, 'state');
    mkdirSync(stateDir);
    const w = await startWitnessProcess(join(stateDir, 'witness.json'));
    try {
      const client = (cluster: string, node: string) => new WitnessClient(addr(w), cluster, node, 2000);
      expect(await client('a+b', 'a').claim()).toMatchObject({ granted: true });
      // The folder of the state file becomes a file: every write fails (ENOTDIR), even as root.
      rmSync(stateDir, { recursive: true });
      writeFileSync(stateDir, 'not a folder');
      expect(await client('a+b', 'a').release().catch((e: Error) => e.message)).toMatch(/witness answered 500: .*cannot write its state file \(ENOTDIR\): nothing changed/);
      expect(await client('c+d', 'c').claim().catch((e: Error) => e.message)).toMatch(/witness answered 500/);
      expect(w.proc.exitCode).toBe(null);
      expect(await witnessGrants(w.port)).toEqual({ 'a+b': expect.objectContaining({ holder: 'a' }) }); // unchanged
      expect(await client('a+b', 'b').claim()).toMatchObject({ granted: false, holder: 'a' });
      await until(() => w.logs.some((l) => l.msg === 'cannot write the witness state file: request refused, nothing changed'), 5000);
      // The state path itself a folder: the rename fails (EISDIR).
      rmSync(stateDir);
      mkdirSync(join(stateDir, 'witness.json'), { recursive: true });
      expect(await client('a+b', 'a').release().catch((e: Error) => e.message)).toMatch(/witness answered 500: .*\(EISDIR\)/);
      // Writable again: the same release goes through and is on disk.
      rmSync(stateDir, { recursive: true });
      mkdirSync(stateDir);
      expect(await client('a+b', 'a').release()).toMatchObject({ holder: null });
      expect(JSON.parse(readFileSync(join(stateDir, 'witness.json'), 'utf8'))).toEqual({ 'a+b': { hasData: true } });
      expect(existsSync(join(stateDir, 'witness.json.tmp'))).toBe(false);
    } finally {
      await w.stop('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
