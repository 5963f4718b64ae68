// One nbd-mirror server on a fresh sparse file in a temp folder, for a test file's lifetime.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startNbdMirror, type RunningServer } from './processes.js';
import { toolEnv } from './tools.js';

export interface Fixture {
  readonly dir: string;
  readonly file: string;
  readonly server: RunningServer;
  readonly uri: string;
  cleanup(): Promise<void>;
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
    cleanup: async () => {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const execFileP = promisify(execFile);

/** Runs a real client tool with /usr/bin first in PATH; rejects with its stderr on failure. */
export async function run(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<string> {
  const child = execFileP(cmd, args, { env: toolEnv(), timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20 });
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
