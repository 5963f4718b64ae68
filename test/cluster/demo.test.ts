// `nbd-mirror demo` (what `npm start` runs): two mirrored nodes and a witness on the fixed demo ports.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { until, volumeStatus } from '../support/cluster.js';
import { run } from '../support/fixture.js';
import { NbdClient } from '../support/nbd-client.js';
import { cliPath, freePort } from '../support/processes.js';

describe('nbd-mirror demo', () => {
  it('starts two mirrored nodes and a witness; a write on one reads back on the other; a stopped node leaves the other writing; SIGTERM stops all', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-demo-'));
    // Its own process group, so a failed run can kill the nodes and the witness with it.
    const demo = spawn(process.execPath, [cliPath, 'demo', '--dir', dir], { stdio: ['ignore', 'pipe', 'ignore'], detached: true });
    try {
      const connected = new Set<string>();
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('demo nodes did not connect in 15 s')), 15_000);
        createInterface({ input: demo.stdout! }).on('line', (line) => {
          const rec = JSON.parse(line) as { msg?: string; node?: string };
          if (rec.msg?.startsWith('volume Connected') && rec.node) connected.add(rec.node);
          if (connected.size === 2) {
            clearTimeout(t);
            resolve();
          }
        });
      });
      const a = await NbdClient.connect({ port: 10809, exportName: 'vol0' });
      await a.write(65536, Buffer.alloc(4096, 0xd3));
      const b = await NbdClient.connect({ port: 10810, exportName: 'vol0' });
      expect((await b.read(65536, 4096)).every((x) => x === 0xd3)).toBe(true);
      expect(await (await fetch('http://127.0.0.1:7800/status')).json()).toEqual({ grants: {} });
      expect(await run(process.execPath, [cliPath, 'status', '--admin', '127.0.0.1:9180'])).toMatch(/vol0: Connected UpToDate {2}quorum connected {2}out of sync 0 B/);
      // A wrong address is said in words.
      const dead = await freePort();
      await expect(run(process.execPath, [cliPath, 'status', '--admin', `127.0.0.1:${dead}`])).rejects.toThrow(new RegExp(`cannot reach the admin endpoint 127\\.0\\.0\\.1:${dead} \\(ECONNREFUSED\\)`));
      b.close();
      // The fail-over the demo suggests: stop b, a goes on writing alone.
      expect(await run(process.execPath, [cliPath, 'stop', '--admin', '127.0.0.1:9181'])).toMatch(/node b is stopping/);
      await until(async () => (await volumeStatus(9180)).quorum === 'alone');
      await a.write(131072, Buffer.alloc(4096, 0xd4));
      expect((await volumeStatus(9180)).outOfSyncBytes).toBe(4096);
      a.close();
      const exit = new Promise<number | null>((r) => demo.once('exit', r));
      demo.kill('SIGTERM');
      expect(await exit).toBe(0);
    } finally {
      try {
        process.kill(-demo.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
