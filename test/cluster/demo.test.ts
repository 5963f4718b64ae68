// `nbd-mirror demo` (what `npm start` runs): two mirrored nodes and a witness on the fixed demo
// ports, with an admin token and a witness secret it makes on the first run and reuses after.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { until, volumeStatus, witnessGrants } from '../support/cluster.js';
import { run } from '../support/fixture.js';
import { NbdClient } from '../support/nbd-client.js';
import { cliPath, freePort } from '../support/processes.js';

/** Starts the demo in `dir`; resolves once both nodes log Connected. Its own process group, so a failed run can kill the nodes and the witness with it. */
async function startDemo(dir: string): Promise<{ stop: () => Promise<number | null>; kill: () => void }> {
  const demo = spawn(process.execPath, [cliPath, 'demo', '--dir', dir], { stdio: ['ignore', 'pipe', 'ignore'], detached: true });
  const kill = () => {
    try {
      process.kill(-demo.pid!, 'SIGKILL');
    } catch {
      /* already gone */
    }
  };
  const connected = new Set<string>();
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('demo nodes did not connect in 15 s')), 15_000);
      demo.once('exit', (code) => reject(new Error(`demo exited with ${code}`)));
      createInterface({ input: demo.stdout! }).on('line', (line) => {
        const rec = JSON.parse(line) as { msg?: string; node?: string };
        if (rec.msg?.startsWith('volume Connected') && rec.node) connected.add(rec.node);
        if (connected.size === 2) {
          clearTimeout(t);
          resolve();
        }
      });
    });
  } catch (err) {
    kill();
    throw err;
  }
  demo.removeAllListeners('exit');
  const stop = () => {
    const exit = new Promise<number | null>((r) => demo.once('exit', r));
    demo.kill('SIGTERM');
    return exit;
  };
  return { stop, kill };
}

describe('nbd-mirror demo', () => {
  it('starts two mirrored nodes and a witness with keys on; a write on one reads back on the other; a stopped node leaves the other writing; SIGTERM stops all; a second run reuses its keys', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-demo-'));
    const config = join(dir, 'cluster.json');
    let demo = await startDemo(dir);
    try {
      for (const f of ['admin.token', 'cluster.secret', 'witness-secrets/a+b.secret']) expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
      const keys = ['admin.token', 'cluster.secret'].map((f) => readFileSync(join(dir, f), 'utf8'));
      const a = await NbdClient.connect({ port: 10809, exportName: 'vol0' });
      await a.write(65536, Buffer.alloc(4096, 0xd3));
      const b = await NbdClient.connect({ port: 10810, exportName: 'vol0' });
      expect((await b.read(65536, 4096)).every((x) => x === 0xd3)).toBe(true);
      // No grant held; the pair's first in-sync tells the witness the cluster holds data (a brand-new copy is refused alone from then on).
      expect(await (await fetch('http://127.0.0.1:7800/status')).json()).toEqual({ grants: {}, hasData: expect.any(Array) });
      // The commands the demo prints: status is open, by address or through the config.
      expect(await run(process.execPath, [cliPath, 'status', '--admin', '127.0.0.1:9180'])).toMatch(/vol0: Connected UpToDate {2}quorum connected {2}out of sync 0 B/);
      expect(await run(process.execPath, [cliPath, 'status', '--config', config, '--node', 'a'])).toMatch(/vol0: Connected UpToDate/);
      // A wrong address is said in words.
      const dead = await freePort();
      await expect(run(process.execPath, [cliPath, 'status', '--admin', `127.0.0.1:${dead}`])).rejects.toThrow(new RegExp(`cannot reach the admin endpoint 127\\.0\\.0\\.1:${dead} \\(ECONNREFUSED\\)`));
      // An action without the token is refused, and changes nothing.
      await expect(run(process.execPath, [cliPath, 'stop', '--admin', '127.0.0.1:9181'])).rejects.toThrow(/refused the request: missing or wrong token \(see --config\/--token-file\)/);
      expect((await volumeStatus(9181)).connection).toBe('Connected');
      b.close();
      // The fail-over the demo suggests: stop b, a goes on writing alone.
      expect(await run(process.execPath, [cliPath, 'stop', '--config', config, '--node', 'b'])).toMatch(/node b is stopping/);
      await until(async () => (await volumeStatus(9180)).quorum === 'alone');
      // a also took the grant: its request, signed with the cluster secret, passed the witness's check.
      await until(async () => (await witnessGrants(7800))['a+b']?.holder === 'a');
      await a.write(131072, Buffer.alloc(4096, 0xd4));
      // The write alone, and the first write (b stored it but never flushed it before leaving:
      // a graceful leave does not vouch for that, so the resync copies it back).
      expect((await volumeStatus(9180)).outOfSyncBytes).toBe(8192);
      a.close();
      expect(await demo.stop()).toBe(0);

      // `npm start` again: same keys, both nodes back and in sync, the token still works.
      demo = await startDemo(dir);
      expect(['admin.token', 'cluster.secret'].map((f) => readFileSync(join(dir, f), 'utf8'))).toEqual(keys);
      await until(async () => (await volumeStatus(9181)).outOfSyncBytes === 0 && (await volumeStatus(9181)).disk === 'UpToDate');
      expect(await run(process.execPath, [cliPath, 'stop', '--admin', '127.0.0.1:9181', '--token-file', join(dir, 'admin.token')])).toMatch(/node b is stopping/);
      expect(await demo.stop()).toBe(0);
    } finally {
      demo.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
