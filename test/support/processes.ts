// Start and stop real server processes (nbd-mirror, nbdkit) on 127.0.0.1 for tests and benches.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { toolEnv } from './tools.js';

export const projectRoot = fileURLToPath(new URL('../../', import.meta.url));
export const cliPath = fileURLToPath(new URL('../../build/cli.js', import.meta.url));

export interface RunningServer {
  readonly port: number;
  readonly uri: (exportName?: string) => string;
  readonly proc: ChildProcess;
  /** Log lines (parsed JSON) seen so far on stdout. */
  readonly logs: Array<Record<string, unknown>>;
  /** SIGTERM, wait for exit; returns the exit code. SIGKILL after `timeoutMs`. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
}

function waitExit(proc: ChildProcess, timeoutMs: number): Promise<number | null> {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode);
    const t = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.once('exit', (code) => {
      clearTimeout(t);
      resolve(code);
    });
  });
}

/**
 * Starts `nbd-mirror serve` with the given arguments plus `--listen 127.0.0.1:0`, and resolves
 * once it logs `listening` with the port the kernel picked.
 */
/** Every nbd-mirror process this test file started, with its logs (printed when a test fails: failure-logs.ts). */
export const startedLogs: Array<{ args: readonly string[]; logs: Array<Record<string, unknown>>; proc: ChildProcess }> = [];

export function startNbdMirror(args: string[], opts: StartOptions = {}): Promise<RunningServer> {
  return startCli(['serve', '--listen', '127.0.0.1:0', ...args], opts);
}

/** Starts one node of a cluster: `nbd-mirror serve --config FILE --node NAME [ARGS…]`. */
export function startClusterNode(config: string, node: string, args: string[] = []): Promise<RunningServer> {
  return startCli(['serve', '--config', config, '--node', node, ...args], {});
}

/** Starts `nbd-mirror witness` on `port` (default: one the kernel picks), keeping its grant in `stateFile` (`args`: e.g. `--secrets DIR`). */
export function startWitnessProcess(stateFile: string, args: string[] = [], port = 0): Promise<RunningServer> {
  return startCli(['witness', '--listen', `127.0.0.1:${port}`, '--state', stateFile, ...args], {});
}

/**
 * Starts `nbd-mirror attach --config FILE --listen 127.0.0.1:0 --admin 127.0.0.1:0 [ARGS…]`;
 * `port` is its NBD port, `adminPort` its status endpoint (`nbd-mirror status --attach`).
 */
export async function startAttachProcess(config: string, args: string[] = []): Promise<RunningServer & { adminPort: number }> {
  const r = await startCli(['attach', '--config', config, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', ...args], { timeoutMs: 30_000 });
  const listening = r.logs.find((l) => l.msg === 'listening')!;
  return { ...r, adminPort: listening.adminPort as number };
}

interface StartOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  /** Another build's cli.js (benchmarks compare builds A/B); default: this tree's. */
  cli?: string;
}

/** Runs `nbd-mirror ARGS…` and resolves once it logs `listening` with its port. */
function startCli(args: string[], opts: StartOptions): Promise<RunningServer> {
  const proc = spawn(process.execPath, [opts.cli ?? cliPath, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  const logs: Array<Record<string, unknown>> = [];
  startedLogs.push({ args, logs, proc });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`nbd-mirror did not start within ${opts.timeoutMs ?? 10000} ms; stderr: ${stderr}`));
    }, opts.timeoutMs ?? 10000);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`nbd-mirror exited with ${code} before listening; stderr: ${stderr}`));
    });
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      logs.push(rec);
      if (rec.msg === 'listening' && typeof rec.port === 'number') {
        clearTimeout(timer);
        proc.removeAllListeners('exit');
        const port = rec.port;
        resolve({
          port,
          proc,
          logs,
          uri: (name = '') => `nbd://127.0.0.1:${port}/${name}`,
          stop: (signal = 'SIGTERM', timeoutMs = 10000) => {
            proc.kill(signal);
            return waitExit(proc, timeoutMs);
          },
        });
      }
    });
  });
}

/** Starts `nbdkit file FILE` on a free port (nbdkit picks none itself, so we probe). */
export async function startNbdkit(file: string, extra: string[] = []): Promise<RunningServer> {
  const port = await freePort();
  const proc = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), ...extra, 'file', file], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: toolEnv(),
  });
  await waitForPort(port, 10000);
  return {
    port,
    proc,
    logs: [],
    uri: (name = '') => `nbd://127.0.0.1:${port}/${name}`,
    stop: (signal = 'SIGTERM', timeoutMs = 10000) => {
      proc.kill(signal);
      return waitExit(proc, timeoutMs);
    },
  };
}

/**
 * A port nothing listens on, for a server a test starts. Taken below the kernel's ephemeral range
 * (32768+), where outgoing connections pick their source ports — one of those could take a port
 * between our check and the server's bind — and from a block of its own per test worker, so
 * parallel test files never pick the same one.
 */
const PORT_BLOCK = 400;
// NBD_MIRROR_TEST_PORT_BASE moves the blocks, so two test runs on one machine never pick the same ports.
const portBase = Number(process.env.NBD_MIRROR_TEST_PORT_BASE ?? 20_000) + (Number(process.env.VITEST_POOL_ID ?? 0) % 30) * PORT_BLOCK;
// A random start: every test file loads this module afresh, and the same first ports in each file
// would meet whatever an earlier file left behind.
let portCursor = Math.floor(Math.random() * PORT_BLOCK);

export async function freePort(): Promise<number> {
  for (let tries = 0; tries < PORT_BLOCK; tries++) {
    const port = portBase + (portCursor++ % PORT_BLOCK);
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port in ${portBase}-${portBase + PORT_BLOCK - 1}`);
}

async function canListen(port: number): Promise<boolean> {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** Polls until something accepts TCP connections on 127.0.0.1:port. */
export async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const net = await import('node:net');
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; Date.now() < deadline; attempt++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, Math.min(20 * 2 ** attempt, 200)));
  }
  throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms`);
}
