// Logs for people and for machines: on a terminal pino-pretty lines, through a pipe JSON lines
// (every other real-process test parses those). `script` gives the process a real terminal.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { cliPath } from '../support/processes.js';

const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-tty-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('on a terminal, log lines are human-readable (time, level, message), not JSON', async () => {
  const cmd = `${process.execPath} ${cliPath} serve --listen 127.0.0.1:0 --export disk=${join(dir, 'disk.img')} --size 1M`;
  const child = spawn('script', ['-qec', cmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  let out = '';
  const seen = await new Promise<boolean>((resolve) => {
    const t = setTimeout(() => resolve(false), 15_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (/INFO.*listening/.test(out)) {
        clearTimeout(t);
        resolve(true);
      }
    });
    child.once('exit', () => resolve(false));
  });
  process.kill(-child.pid!, 'SIGTERM'); // script and the server under it
  // eslint-disable-next-line no-control-regex
  const plain = out.replace(/\x1b\[[0-9;]*m/g, '');
  expect(seen, plain).toBe(true);
  expect(plain).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: export ready/m);
  expect(plain).not.toContain('{"level"');
});
