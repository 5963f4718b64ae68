// Real server processes for the fuzzer: one standalone export, or a two-node mirrored cluster
// whose node a is attacked while health checks also read back through node b.
import { serveExport, type ServeMode } from '../support/fixture.js';
import type { FuzzTarget } from './nbd-fuzz-runner.js';

export interface StartedTarget {
  readonly target: FuzzTarget;
  readonly description: string;
  cleanup(): Promise<void>;
}

export async function startTarget(mode: ServeMode, size = '64M'): Promise<StartedTarget> {
  const f = await serveExport(mode, { size });
  const processes = f.peer
    ? [
        { name: 'node a', server: f.server },
        { name: 'node b', server: f.peer },
      ]
    : [{ name: 'nbd-mirror serve', server: f.server }];
  return {
    target: { port: f.server.port, exportName: f.exportName, processes, ...(f.peer ? { mirrorPorts: [f.peer.port] } : {}) },
    description: f.peer
      ? `mirrored pair: node a NBD ${f.server.port} (fuzzed), node b NBD ${f.peer.port} (read back), volume ${f.exportName} (${size})`
      : `standalone nbd-mirror serve, export ${f.exportName} (${size}), port ${f.server.port}`,
    cleanup: async () => {
      for (const s of [f.server, f.peer]) await s?.stop('SIGKILL').catch(() => undefined);
      await f.cleanup().catch(() => undefined);
    },
  };
}
