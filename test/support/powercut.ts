// Drives test/support/powercut/powercut_fs.py: a FUSE mount over a backing directory that drops,
// on command, what was written but never synced (a power cut), then unmounts (the reboot).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { toolEnv } from './tools.js';

const script = fileURLToPath(new URL('./powercut/powercut_fs.py', import.meta.url));

export interface PowerCutMount {
  readonly mountpoint: string;
  /** Power cut: every unsynced write dropped ('all'), or each unsynced sector at random ({ torn: seed }). Unmounts. */
  cut(how: 'all' | { torn: number }): Promise<{ sectors: number; sizes: number; entries: number }>;
  /** Clean unmount, nothing dropped. */
  stop(): Promise<void>;
  /**
   * What went wrong in the filesystem itself (not the disk it stands for): operations it did not
   * expect (answered with EIO, logged with their traceback), or its process ending on its own.
   * Each fault is returned once; empty while it works as it should.
   */
  faults(): string[];
}

export async function mountPowerCut(backing: string, mountpoint: string, timeoutMs = 10_000): Promise<PowerCutMount> {
  mkdirSync(backing, { recursive: true });
  mkdirSync(mountpoint, { recursive: true });
  const proc = spawn('/usr/bin/python3', [script, backing, mountpoint], { stdio: ['pipe', 'pipe', 'pipe'], env: toolEnv() });
  let stderr = '';
  let asked = false; // a cut or stop was asked: the process ends because of it
  const reported = new Set<string>();
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  proc.stdin!.on('error', () => undefined); // a dead filesystem: reported by faults() and the next answer
  const lines = createInterface({ input: proc.stdout! });
  const next = lineReader(lines, proc, () => stderr);
  const first = await withTimeout(next(), timeoutMs, 'the power-cut filesystem did not mount');
  if (first !== 'ready') throw new Error(`power-cut filesystem: ${first}; stderr: ${stderr}`);
  const exited = new Promise<void>((res) => (proc.exitCode !== null || proc.signalCode !== null ? res() : proc.once('exit', () => res())));
  return {
    mountpoint,
    async cut(how) {
      asked = true;
      try {
        proc.stdin!.write(how === 'all' ? 'cut all\n' : `cut torn ${how.torn}\n`);
        const line = await withTimeout(nudged(proc, next()), timeoutMs, 'no answer to the cut');
        const m = /^cut: (\d+) sectors, (\d+) sizes, (\d+) entries reverted$/.exec(line);
        if (!m) throw new Error(`power-cut filesystem: ${line}; stderr: ${stderr}`);
        await withTimeout(exited, timeoutMs, 'the power-cut filesystem did not unmount');
        return { sectors: Number(m[1]), sizes: Number(m[2]), entries: Number(m[3]) };
      } catch (e) {
        // Whatever state it is in, the mount point is made usable again for the next mount.
        await forceUnmount(proc, mountpoint);
        throw new Error(`${(e as Error).message}; power-cut filesystem ${describeExit(proc)}; stderr: ${stderr}`);
      }
    },
    async stop() {
      asked = true;
      if (proc.exitCode !== null || proc.signalCode !== null) return forceUnmount(proc, mountpoint);
      proc.stdin!.write('stop\n');
      await withTimeout(nudged(proc, exited), timeoutMs, 'the power-cut filesystem did not unmount').catch(() => forceUnmount(proc, mountpoint));
    },
    faults() {
      const unexpected = stderr.split('\n').filter((l) => l.startsWith('powercut: unexpected'));
      const ended = !asked && (proc.exitCode !== null || proc.signalCode !== null) ? [`the power-cut filesystem at ${mountpoint} ${describeExit(proc)} on its own; stderr: ${stderr}`] : [];
      const all = [...unexpected.map((l) => `${l} (at ${mountpoint})`), ...ended];
      const fresh = all.filter((f) => !reported.has(f));
      for (const f of fresh) reported.add(f);
      return fresh;
    },
  };
}

/**
 * Sends SIGUSR2 every 100 ms until `answer` settles: the filesystem's read of /dev/fuse can block
 * every Python thread, its command reader included, until a request comes (powercut_fs.py,
 * commands); the signal ends that read.
 */
async function nudged<T>(proc: ChildProcess, answer: Promise<T>): Promise<T> {
  const timer = setInterval(() => proc.exitCode === null && proc.signalCode === null && proc.kill('SIGUSR2'), 100);
  try {
    return await answer;
  } finally {
    clearInterval(timer);
  }
}

function describeExit(proc: ChildProcess): string {
  if (proc.exitCode !== null) return `exited with ${proc.exitCode}`;
  if (proc.signalCode !== null) return `was killed by ${proc.signalCode}`;
  return 'was still running';
}

/** Kills the filesystem's process and detaches its mount (a dead FUSE mount answers ENOTCONN). */
async function forceUnmount(proc: ChildProcess, mountpoint: string): Promise<void> {
  if (proc.exitCode === null && proc.signalCode === null) {
    proc.kill('SIGUSR1'); // its threads' stacks on stderr: where it hangs
    await new Promise((res) => setTimeout(res, 300));
    const gone = new Promise<void>((res) => proc.once('exit', () => res()));
    proc.kill('SIGKILL');
    await gone;
  }
  await promisify(execFile)('umount', ['-l', mountpoint]).catch(() => undefined); // not mounted: nothing to do
}

function lineReader(lines: ReturnType<typeof createInterface>, proc: ChildProcess, stderr: () => string): () => Promise<string> {
  const queue: string[] = [];
  const waiting: Array<(l: string) => void> = [];
  let ended: string | null = null;
  lines.on('line', (l) => (waiting.length > 0 ? waiting.shift()!(l) : queue.push(l)));
  // 'close', not 'exit': every line it printed has been read by then.
  proc.once('close', (code, signal) => {
    ended = `exited with ${code ?? signal}: ${stderr()}`;
    for (const w of waiting.splice(0)) w(ended);
  });
  // A line printed before the exit is read first; after that, the exit is the answer (not a wait).
  return () => (queue.length > 0 ? Promise.resolve(queue.shift()!) : ended !== null ? Promise.resolve(ended) : new Promise((res) => waiting.push(res)));
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, rej) => (t = setTimeout(() => rej(new Error(`${what} within ${ms} ms`)), ms)))]).finally(() => clearTimeout(t));
}
