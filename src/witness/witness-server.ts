// The witness: a small process with no volume data that breaks the tie when two nodes lose
// each other. A node that loses its peer asks for the write grant (POST /claim); the witness
// gives it to one node per cluster and keeps it there until that node, connected to its peer
// again and in sync, gives it back (POST /release). The other node is refused for as long:
// its copy is, or may become, older than the holder's. So at most one node writes alone, and
// two nodes can never both write apart (no split brain).
//
// The grant is kept in a small state file (written to a temporary file, synced, renamed), so a
// restarted witness still knows who holds it; without that, a restart could hand a second grant.
import fs from 'node:fs';
import http from 'node:http';
import { dirname } from 'node:path';
import { z } from 'zod';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import { guardedHandler, requestPath } from '../http-request.js';

export const claimSchema = z.strictObject({
  cluster: z.string().min(1).max(256),
  node: z.string().min(1).max(64),
});

export type WitnessRequest = z.output<typeof claimSchema>;

export interface WitnessAnswer {
  granted: boolean;
  /** Who holds the grant now (null: nobody). */
  holder: string | null;
  reason: string;
}

interface Grant {
  holder: string;
  since: string;
}

/** The witness's decisions, pure: state in, state and answer out. */
export class WitnessState {
  constructor(private readonly grants: Map<string, Grant> = new Map()) {}

  claim(r: WitnessRequest, now = new Date()): WitnessAnswer {
    const g = this.grants.get(r.cluster);
    if (!g) {
      this.grants.set(r.cluster, { holder: r.node, since: now.toISOString() });
      return { granted: true, holder: r.node, reason: 'granted: this node writes alone until it is back in sync with its peer' };
    }
    if (g.holder === r.node) return { granted: true, holder: r.node, reason: `already held since ${g.since}` };
    return { granted: false, holder: g.holder, reason: `node ${g.holder} has written alone since ${g.since}: this node's copy is outdated until it resyncs from ${g.holder}` };
  }

  release(r: WitnessRequest): WitnessAnswer {
    const g = this.grants.get(r.cluster);
    if (g?.holder !== r.node) return { granted: false, holder: g?.holder ?? null, reason: g ? `held by ${g.holder}, not ${r.node}` : 'nobody holds it' };
    this.grants.delete(r.cluster);
    return { granted: false, holder: null, reason: 'released' };
  }

  toJSON(): Record<string, Grant> {
    return Object.fromEntries(this.grants);
  }

  static fromJSON(json: unknown): WitnessState {
    const parsed = z.record(z.string(), z.strictObject({ holder: z.string(), since: z.string() })).parse(json);
    return new WitnessState(new Map(Object.entries(parsed)));
  }
}

function load(path: string): WitnessState {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new WitnessState();
    throw err;
  }
  try {
    return WitnessState.fromJSON(JSON.parse(text));
  } catch (err) {
    throw new Error(`witness state file ${path} is damaged (${(err as Error).message}); refusing to start rather than forget a grant`);
  }
}

function save(path: string, state: WitnessState): void {
  const tmp = `${path}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, `${JSON.stringify(state, null, 2)}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, path);
  const dirFd = fs.openSync(dirname(path), 'r');
  fs.fsyncSync(dirFd);
  fs.closeSync(dirFd);
}

export async function startWitness(addr: HostPort, statePath: string, log: Logger): Promise<http.Server> {
  const state = load(statePath);
  const server = http.createServer(
    guardedHandler(log, (req, res) => {
      const path = requestPath(req.url);
      const reply = (code: number, body: unknown): void => {
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      if (req.method === 'GET' && path === '/status') return reply(200, { grants: state.toJSON() });
      if (req.method !== 'POST' || (path !== '/claim' && path !== '/release')) return reply(404, { error: 'GET /status, POST /claim, POST /release' });
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (d: string) => {
        body += d;
        if (body.length > 4096) req.destroy();
      });
      req.on('end', () => {
        let r: WitnessRequest;
        try {
          r = claimSchema.parse(JSON.parse(body));
        } catch (err) {
          return reply(400, { error: `bad request: ${(err as Error).message}` });
        }
        const before = JSON.stringify(state);
        const answer = path === '/claim' ? state.claim(r) : state.release(r);
        if (JSON.stringify(state) !== before) {
          save(statePath, state); // durable before the node hears the answer
          log.info({ cluster: r.cluster, node: r.node, holder: answer.holder, action: path.slice(1) }, path === '/claim' ? 'write grant given' : 'write grant released');
        } else if (path === '/claim' && !answer.granted) {
          log.warn({ cluster: r.cluster, node: r.node, holder: answer.holder }, 'write grant refused: held by the other node');
        }
        reply(200, answer);
      });
    }),
  );
  server.on('error', (err) => log.error({ err }, 'witness error'));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(addr.port, addr.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}
