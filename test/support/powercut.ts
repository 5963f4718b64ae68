// Drives test/support/powercut/powercut_fs.py: a FUSE mount over a backing directory that drops,
// on command, what was written but never synced (a power cut), then unmounts (the reboot).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { toolEnv } from './tools.js';

const script = fileURLToPath(new URL('./powercut/powercut_fs.py', import.meta.url));

export interface PowerCutMount {
  readonly mountpoint: string;
  /** Power cut: every unsynced write dropped ('all'), or each unsynced sector at random ({ torn: seed }). Unmounts. */
  cut(how: 'all' | { torn: number }): Promise<{ sectors: number; sizes: number; entries: number }>;
  /** Clean unmount, nothing dropped. */
  stop(): Promise<void>;
}

export async function mountPowerCut(backing: string, mountpoint: string, timeoutMs = 10_000): Promise<PowerCutMount> {
  mkdirSync(backing, { recursive: true });
  mkdirSync(mountpoint, { recursive: true });
  const proc = spawn('/usr/bin/python3', [script, backing, mountpoint], { stdio: ['pipe', 'pipe', 'pipe'], env: toolEnv() });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines = createInterface({ input: proc.stdout! });
  const next = lineReader(lines, proc, () => stderr);
  const first = await withTimeout(next(), timeoutMs, 'the power-cut filesystem did not mount');
  if (first !== 'ready') throw new Error(`power-cut filesystem: ${first}; stderr: ${stderr}`);
  const exited = new Promise<void>((res) => proc.once('exit', () => res()));
  return {
    mountpoint,
    async cut(how) {
      proc.stdin!.write(how === 'all' ? 'cut all\n' : `cut torn ${how.torn}\n`);
      const line = await withTimeout(next(), timeoutMs, 'no answer to the cut');
      const m = /^cut: (\d+) sectors, (\d+) sizes, (\d+) entries reverted$/.exec(line);
      if (!m) throw new Error(`power-cut filesystem: ${line}; stderr: ${stderr}`);
      await withTimeout(exited, timeoutMs, 'the power-cut filesystem did not unmount');
      return { sectors: Number(m[1]), sizes: Number(m[2]), entries: Number(m[3]) };
    },
    async stop() {
      if (proc.exitCode !== null) return;
      proc.stdin!.write('stop\n');
      await withTimeout(exited, timeoutMs, 'the power-cut filesystem did not unmount');
    },
  };
}

function lineReader(lines: ReturnType<typeof createInterface>, proc: ChildProcess, stderr: () => string): () => Promise<string> {
  const queue: string[] = [];
  const waiting: Array<(l: string) => void> = [];
  lines.on('line', (l) => (waiting.length > 0 ? waiting.shift()!(l) : queue.push(l)));
  proc.once('exit', (code) => {
    for (const w of waiting.splice(0)) w(`exited with ${code}: ${stderr()}`);
  });
  return () => (queue.length > 0 ? Promise.resolve(queue.shift()!) : new Promise((res) => waiting.push(res)));
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, rej) => (t = setTimeout(() => rej(new Error(`${what} within ${ms} ms`)), ms)))]).finally(() => clearTimeout(t));
}
