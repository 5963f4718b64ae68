// The witness: a small process with no volume data that breaks the tie when two nodes lose
// each other. A node that loses its peer asks for the write grant (POST /claim); the witness
// gives it to one node per cluster and keeps it there until that node, connected to its peer
// again and in sync, gives it back (POST /release). The other node is refused for as long:
// its copy is, or may become, older than the holder's. So at most one node writes alone, and
// two nodes can never both write apart (no split brain).
//
// The grant is kept in a small state file (written to a temporary file, synced, renamed), so a
// restarted witness still knows who holds it; without that, a restart could hand a second grant.
// A change is made on a copy of the state and takes effect only once the file has it: a write
// that fails is answered 500 and the witness goes on as if the request never came. (The file
// then holds the old state or, if only the final folder sync failed, the new one: a grant
// nobody was told of, or a release its node retries; neither lets two nodes write apart.)
//
// With secrets (`--secrets`), requests must be signed with their cluster's secret
// (request-signature.ts), and clusters without one are refused; either way the state holds at
// most MAX_CLUSTERS grants, so nobody can grow its file without bound.
import fs from 'node:fs';
import http from 'node:http';
import { replaceFileDurably } from '../durable.js';
import { z } from 'zod';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import { browserRefusal, guarded, guardedHandler, readBody, refusalLog, requestPath, type Refusal } from '../http-request.js';
import { SignatureCheck } from './request-signature.js';

/** Grants held at once, over all clusters: far more than one witness serves. */
export const MAX_CLUSTERS = 1024;
const MAX_BODY = 4096;

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

/** A claim the witness cannot record: it holds MAX_CLUSTERS grants already. */
export class WitnessFullError extends Error {
  readonly code = 'NBD_MIRROR_WITNESS_FULL';
}

/** The witness's decisions, pure: state in, state and answer out. */
export class WitnessState {
  constructor(private readonly grants: Map<string, Grant> = new Map()) {}

  claim(r: WitnessRequest, now = new Date()): WitnessAnswer {
    const g = this.grants.get(r.cluster);
    if (!g) {
      if (this.grants.size >= MAX_CLUSTERS) throw new WitnessFullError(`the witness holds grants for ${MAX_CLUSTERS} clusters already: cluster "${r.cluster}" cannot be given one`);
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

  copy(): WitnessState {
    return new WitnessState(new Map(this.grants));
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
  replaceFileDurably(path, `${JSON.stringify(state, null, 2)}\n`);
}

export interface WitnessOptions {
  /** Cluster id → secret: only signed requests of these clusters are served. Absent: no checks (a warning says so). */
  secrets?: ReadonlyMap<string, Buffer>;
}

export async function startWitness(addr: HostPort, statePath: string, log: Logger, opts: WitnessOptions = {}): Promise<http.Server> {
  let state = load(statePath);
  const signatures = opts.secrets && new SignatureCheck(opts.secrets);
  if (!signatures) log.warn('the witness checks no secrets (--secrets): anyone who reaches it can take or give back a grant; nbd-mirror keygen writes a cluster secret');
  const refused = refusalLog(log);
  const server = http.createServer(
    guardedHandler(log, (req, res) => {
      const path = requestPath(req.url);
      const reply = (code: number, body: unknown): void => {
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      const refuse = (r: Refusal, who: Partial<WitnessRequest> = {}): void => {
        refused({ ...who, action: path.slice(1), status: r.status, remote: req.socket.remoteAddress, reason: r.message }, 'witness request refused');
        reply(r.status, { error: r.message });
      };
      const browser = browserRefusal(req);
      if (browser) return refuse(browser);
      if (req.method === 'GET' && path === '/status') return reply(200, { grants: state.toJSON() });
      if (req.method !== 'POST' || (path !== '/claim' && path !== '/release')) return reply(404, { error: 'GET /status, POST /claim, POST /release' });
      readBody(req, MAX_BODY, (body) =>
        guarded(log, req, res, () => {
          let r: WitnessRequest;
          try {
            r = claimSchema.parse(JSON.parse(body.toString('utf8')));
          } catch (err) {
            return reply(400, { error: `bad request: ${(err as Error).message}` });
          }
          const denied = signatures?.check(r.cluster, req, path, body);
          if (denied) return refuse(denied, r);
          const next = state.copy();
          let answer: WitnessAnswer;
          try {
            answer = path === '/claim' ? next.claim(r) : next.release(r);
          } catch (err) {
            if (!(err instanceof WitnessFullError)) throw err;
            return refuse({ status: 503, message: err.message }, r);
          }
          if (JSON.stringify(next) !== JSON.stringify(state)) {
            try {
              save(statePath, next); // durable before the node hears the answer
            } catch (err) {
              log.error({ err, state: statePath, cluster: r.cluster, node: r.node, action: path.slice(1) }, 'cannot write the witness state file: request refused, nothing changed');
              return reply(500, { error: `the witness cannot write its state file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): nothing changed` });
            }
            state = next;
            log.info({ cluster: r.cluster, node: r.node, holder: answer.holder, action: path.slice(1) }, path === '/claim' ? 'write grant given' : 'write grant released');
          } else if (path === '/claim' && !answer.granted) {
            log.warn({ cluster: r.cluster, node: r.node, holder: answer.holder }, 'write grant refused: held by the other node');
          }
          reply(200, answer);
        }),
      );
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
