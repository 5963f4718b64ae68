// The witness: a small process with no volume data that breaks the tie when two nodes lose
// each other. A node that loses its peer asks for the write grant (POST /claim); the witness
// gives it to one node per cluster and keeps it there until that node, connected to its peer
// again and in sync, gives it back (POST /release). The other node is refused for as long:
// its copy is, or may become, older than the holder's. So at most one node writes alone, and
// two nodes can never both write apart (no split brain).
//
// It also remembers, per cluster, that the cluster holds data (`hasData`): set by any grant it
// gives and by a release from a node whose copy is not new (a release comes when the
// pair is in sync, or before a graceful leave); it never clears. A claim says whether the
// claimer's copy is brand new (a replaced, empty disk, or a node never used); such a claim is
// refused once the cluster holds data, even from the grant's holder: its empty copy would serve
// reads of nothing and writes that hide everything its peer holds. It serves again once its
// peer is connected and it has synced from it. The first node of a new cluster, alone and
// empty, is still granted (nothing is recorded yet). A record in a file written before this
// flag existed is a grant: the cluster held data then, so it counts as `hasData`.
//
// The state is kept in a small file (written to a temporary file, synced, renamed), so a
// restarted witness still knows who holds the grant; without that, a restart could hand a
// second grant. A change is made on a copy of the state and takes effect only once the file has
// it: a write that fails is answered 500 and the witness goes on as if the request never came.
// (The file then holds the old state or, if only the final folder sync failed, the new one: a
// grant nobody was told of, or a release its node retries; neither lets two nodes write apart.)
//
// With secrets (`--secrets`), requests must be signed with their cluster's secret
// (request-signature.ts), and clusters without one are refused; either way the state holds at
// most MAX_CLUSTERS clusters, so nobody can grow its file without bound.
import fs from 'node:fs';
import http from 'node:http';
import { replaceFileDurably } from '../durable.js';
import { z } from 'zod';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import { browserRefusal, guarded, guardedHandler, readBody, refusalLog, requestPath, type Refusal } from '../http-request.js';
import { SignatureCheck } from './request-signature.js';

/** Clusters the state records (a grant, or only `hasData`): far more than one witness serves. */
export const MAX_CLUSTERS = 1024;
const MAX_BODY = 4096;

export const claimSchema = z.strictObject({
  cluster: z.string().min(1).max(256),
  node: z.string().min(1).max(64),
  /**
   * The sender's copy is brand new: every volume on it is new and was never synced nor written
   * (a replaced disk, or a node never used). Absent (a node from before this field): not new.
   */
  brandNew: z.boolean().optional(),
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

/** What the witness knows of one cluster: it holds data (always, once recorded), and the grant if given. */
interface ClusterRecord {
  hasData: true;
  grant?: Grant;
}

/** In the state file: the grant's fields flat, as they were before `hasData` existed. */
const recordSchema = z
  .strictObject({ hasData: z.literal(true).optional(), holder: z.string().optional(), since: z.string().optional() })
  .refine((r) => (r.holder === undefined) === (r.since === undefined), { message: 'holder and since go together' })
  .refine((r) => r.hasData || r.holder !== undefined, { message: 'a record holds hasData or a grant' });

/** A claim the witness cannot record: it knows MAX_CLUSTERS clusters already. */
export class WitnessFullError extends Error {
  readonly code = 'NBD_MIRROR_WITNESS_FULL';
}

/** The witness's decisions, pure: state in, state and answer out. */
export class WitnessState {
  constructor(private readonly clusters: Map<string, ClusterRecord> = new Map()) {}

  claim(r: WitnessRequest, now = new Date()): WitnessAnswer {
    const c = this.clusters.get(r.cluster);
    const g = c?.grant;
    if (c && r.brandNew === true) {
      // Even the holder: its grant was for the copy it had before its disk was replaced. A
      // refusal changes nothing: the grant stays, and goes back at the pair's next in-sync.
      return { granted: false, holder: g?.holder ?? null, reason: `a brand-new copy cannot serve alone: this cluster holds data on its peer; ${r.node} serves once connected to its peer and synced from it` };
    }
    if (!g) {
      this.record(r.cluster, { hasData: true, grant: { holder: r.node, since: now.toISOString() } });
      return { granted: true, holder: r.node, reason: 'granted: this node writes alone until it is back in sync with its peer' };
    }
    if (g.holder === r.node) return { granted: true, holder: r.node, reason: `already held since ${g.since}` };
    return { granted: false, holder: g.holder, reason: `node ${g.holder} has written alone since ${g.since}: this node's copy is outdated until it resyncs from ${g.holder}` };
  }

  release(r: WitnessRequest): WitnessAnswer {
    const c = this.clusters.get(r.cluster);
    const g = c?.grant;
    // A node whose copy is not new has data (it is in sync with its peer, or leaving): remembered.
    if (!c && r.brandNew !== true) this.record(r.cluster, { hasData: true });
    if (g?.holder !== r.node) return { granted: false, holder: g?.holder ?? null, reason: g ? `held by ${g.holder}, not ${r.node}` : 'nobody holds it' };
    this.clusters.set(r.cluster, { hasData: true });
    return { granted: false, holder: null, reason: 'released' };
  }

  /** The cluster holds data (see the file comment): every recorded cluster does. */
  hasData(cluster: string): boolean {
    return this.clusters.has(cluster);
  }

  /** The clusters that hold data (GET /status). */
  withData(): string[] {
    return [...this.clusters.keys()];
  }

  /** Who holds each cluster's grant (GET /status). */
  grants(): Record<string, Grant> {
    return Object.fromEntries([...this.clusters].flatMap(([id, c]) => (c.grant ? [[id, c.grant]] : [])));
  }

  copy(): WitnessState {
    return new WitnessState(new Map(this.clusters));
  }

  toJSON(): Record<string, { hasData: true; holder?: string; since?: string }> {
    return Object.fromEntries([...this.clusters].map(([id, c]) => [id, { hasData: c.hasData, ...c.grant }]));
  }

  static fromJSON(json: unknown): WitnessState {
    const parsed = z.record(z.string(), recordSchema).parse(json);
    // A record without `hasData` is a grant from a file written before the flag: it held data then.
    return new WitnessState(new Map(Object.entries(parsed).map(([id, r]) => [id, { hasData: true, ...(r.holder !== undefined && { grant: { holder: r.holder, since: r.since! } }) }])));
  }

  private record(cluster: string, c: ClusterRecord): void {
    if (!this.clusters.has(cluster) && this.clusters.size >= MAX_CLUSTERS) throw new WitnessFullError(`the witness knows ${MAX_CLUSTERS} clusters already: cluster "${cluster}" cannot be recorded`);
    this.clusters.set(cluster, c);
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
      if (req.method === 'GET' && path === '/status') return reply(200, { grants: state.grants(), hasData: state.withData() });
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
            const what = path === '/claim' ? 'write grant given' : answer.reason === 'released' ? 'write grant released' : 'cluster recorded as holding data';
            log.info({ cluster: r.cluster, node: r.node, holder: answer.holder, action: path.slice(1) }, what);
          } else if (path === '/claim' && !answer.granted) {
            const brandNew = r.brandNew === true && state.hasData(r.cluster);
            log.warn({ cluster: r.cluster, node: r.node, holder: answer.holder }, brandNew ? 'write grant refused: a brand-new copy, and this cluster holds data' : 'write grant refused: held by the other node');
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
