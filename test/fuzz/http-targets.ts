// A child process for parsers-fuzz.test.ts: the witness HTTP server and a node's admin HTTP
// server (with stand-in actions), both on 127.0.0.1, so that input which crashes one shows as
// this process dying (its stderr says why) instead of taking the test runner down.
// Prints one JSON line: {"witness": PORT, "admin": PORT}.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAdminServer } from '../../src/admin/admin-server.js';
import { createMetrics } from '../../src/admin/metrics.js';
import { createLogger } from '../../src/log.js';
import { startWitness } from '../../src/witness/witness-server.js';

const log = createLogger('silent');
const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-http-fuzz-'));
const witness = await startWitness({ host: '127.0.0.1', port: 0 }, join(dir, 'witness.json'), log);
const admin = await startAdminServer(
  { host: '127.0.0.1', port: 0 },
  {
    status: () => ({ node: 'a', volumes: {} }),
    metrics: createMetrics(() => ({ volumes: {} })),
    discard: (volume, node) => {
      throw new Error(`no volume "${volume}" here (discard ${node})`);
    },
    verify: (volume) => {
      throw new Error(`no volume "${volume}" here`);
    },
    stop: () => 'not stopping: this is a fuzz target',
    volume: (fields) => Promise.reject(new Error(`no volume change here (${JSON.stringify(fields).slice(0, 200)})`)),
  },
  log,
);
const port = (s: typeof witness) => (s.address() as { port: number }).port;
console.log(JSON.stringify({ witness: port(witness), admin: port(admin), dir }));
// Exit with the parent.
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
