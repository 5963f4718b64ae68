// One nbd-mirror server on a fresh sparse file in a temp folder, for a test file's lifetime.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { cliPath, startClusterNode, startNbdMirror, type RunningServer } from './processes.js';
import { pairPorts, until, volumeStatus, writePairConfig } from './cluster.js';
import { toolEnv } from './tools.js';

export interface Fixture {
  readonly dir: string;
  readonly file: string;
  /** The server clients talk to (node a of a mirrored pair). */
  readonly server: RunningServer;
  readonly uri: string;
  readonly exportName: string;
  /** A mirrored pair's other node (it must stay alive and connected through whatever a's clients do). */
  readonly peer?: RunningServer;
  cleanup(): Promise<void>;
}

/** Standalone or mirrored: the two ways an export is served, for suites that run against both. */
export type ServeMode = 'standalone' | 'mirrored';

export function serveExport(mode: ServeMode, opts: { size?: string; extraArgs?: string[] } = {}): Promise<Fixture> {
  return mode === 'standalone' ? serveTempExport(opts) : serveMirroredExport(opts);
}

/**
 * A mirrored pair on loopback serving volume `vol0`: resolves once
 * a and b are connected and b is UpToDate. Clients attach to node a (`uri`).
 */
export async function serveMirroredExport(opts: { size?: string; extraArgs?: string[]; config?: (dir: string) => Parameters<typeof writePairConfig>[4] } = {}): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-pair-'));
  const p = await pairPorts();
  const config = writePairConfig(join(dir, 'cluster.json'), p, opts.size ?? '64M', p.peerB, opts.config?.(dir));
  const a = await startClusterNode(config, 'a', opts.extraArgs);
  const b = await startClusterNode(config, 'b', opts.extraArgs);
  await until(async () => (await volumeStatus(p.adminA)).connection === 'Connected' && (await volumeStatus(p.adminB)).disk === 'UpToDate');
  return {
    dir,
    file: join(dir, 'a', 'vol0.img'),
    server: a,
    peer: b,
    uri: a.uri('vol0'),
    exportName: 'vol0',
    cleanup: async () => {
      await Promise.all([a.stop(), b.stop()]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function serveTempExport(opts: { size?: string; name?: string; extraArgs?: string[] } = {}): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-test-'));
  const name = opts.name ?? 'disk';
  const file = join(dir, `${name}.img`);
  const server = await startNbdMirror(['--export', `${name}=${file}`, '--size', opts.size ?? '64M', ...(opts.extraArgs ?? [])]);
  return {
    dir,
    file,
    server,
    uri: server.uri(name),
    exportName: name,
    cleanup: async () => {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const execFileP = promisify(execFile);

/** Runs a real client tool with /usr/bin first in PATH; rejects with its stderr on failure. */
export async function run(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const child = execFileP(cmd, args, { env: { ...toolEnv(), ...opts.env }, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20 });
  if (opts.input !== undefined) {
    child.child.stdin!.end(opts.input);
  }
  try {
    return (await child).stdout;
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.message}\n${e.stderr ?? ''}${e.stdout ?? ''}`);
  }
}

/** Runs the nbd-mirror CLI and gives its exit code and output, whether it succeeded or not. */
export function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cliPath, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr });
    });
  });
}
