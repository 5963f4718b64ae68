// The HTTP admin endpoint of a node: GET /status answers JSON (what `nbd-mirror status` prints);
// GET /metrics answers Prometheus metrics (src/admin/metrics.ts);
// POST /resolve?volume=V&discard=NODE resolves a split brain on the node named to discard;
// POST /verify?volume=V[&source=NODE] starts an online verify (with source: and repair);
// POST /stop stops the node gracefully (it tells its peer it is leaving);
// POST /volume/create?name=V&size=BYTES, /volume/resize?name=V&size=BYTES,
// /volume/delete?name=V[&force=1] change volumes online, on both nodes (volume-ops.ts).
// Listens where the cluster config says (`admin`: loopback unless `security.adminPublic`); who
// may do what is admin-auth.ts. Action parameters are in the query; the JSON body is not used.
import http from 'node:http';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import type { NodeMetrics } from './metrics.js';
import { adminRefusal } from './admin-auth.js';
import { guardedHandler, readBody, refusalLog, requestPath, requestQuery } from '../http-request.js';

/** An action's body is not used; anything longer than this drops the connection. */
const MAX_ACTION_BODY = 1024;

export interface AdminActions {
  status(): unknown;
  readonly metrics: NodeMetrics;
  /** Discard this node's changes to `volume` (split brain); returns what happens next. */
  discard(volume: string, node: string): string;
  /** Start an online verify of `volume`; with `repairSource`, repair from that node. */
  verify(volume: string, repairSource: string | null): string;
  /** Stop this node gracefully (as SIGTERM does). */
  stop(): string;
  /** Create, resize or delete a volume on both nodes: `fields` as the query gave them, checked by the node. */
  volume(fields: Record<string, unknown>): Promise<string>;
}

/** The fields of a volume change from its query: sizes as decimal bytes only, force as 1/true or absent. */
function volumeFields(op: string, q: URLSearchParams): Record<string, unknown> {
  const fields: Record<string, unknown> = { op, name: q.get('name') ?? '' };
  const size = q.get('size');
  if (size !== null) {
    if (!/^\d{1,20}$/.test(size)) throw new Error(`size "${size.slice(0, 40)}" is not a number of bytes`);
    fields.size = Number(size);
  }
  const force = q.get('force');
  if (force !== null) {
    if (force !== '1' && force !== 'true') throw new Error(`force "${force.slice(0, 40)}" is not 1 or true`);
    fields.force = true;
  }
  const unknown = [...q.keys()].filter((k) => !['name', 'size', 'force'].includes(k));
  if (unknown.length > 0) throw new Error(`unknown parameter ${unknown[0]!.slice(0, 40)} (name, size, force)`);
  return fields;
}

/** `token`: the bearer token actions need (undefined: none, as before keys existed; a warning says so). */
export function startAdminServer(addr: HostPort, actions: AdminActions, log: Logger, token?: Buffer): Promise<http.Server> {
  if (token === undefined) log.warn('the admin endpoint has no token (security.adminToken): anyone who reaches it can stop the node or resolve a split brain; nbd-mirror keygen writes one');
  const refused = refusalLog(log);
  const actionsByPath: Record<string, (q: URLSearchParams) => string | Promise<string>> = {
    '/resolve': (q) => actions.discard(q.get('volume') ?? '', q.get('discard') ?? ''),
    '/verify': (q) => actions.verify(q.get('volume') ?? '', q.get('source')),
    '/stop': () => actions.stop(),
    '/volume/create': (q) => actions.volume(volumeFields('create', q)),
    '/volume/resize': (q) => actions.volume(volumeFields('resize', q)),
    '/volume/delete': (q) => actions.volume(volumeFields('delete', q)),
  };
  const server = http.createServer(
    guardedHandler(log, (req, res) => {
      const path = requestPath(req.url);
      const refusal = adminRefusal(req, token);
      if (refusal) {
        refused({ method: req.method, path, status: refusal.status, remote: req.socket.remoteAddress, reason: refusal.message }, 'admin request refused');
        res.writeHead(refusal.status, { 'content-type': 'text/plain', ...(refusal.status === 401 ? { 'www-authenticate': 'Bearer' } : {}) });
        res.end(`${refusal.message}\n`);
        return;
      }
      if (req.method === 'GET' && path === '/status') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(actions.status()));
        return;
      }
      if (req.method === 'GET' && path === '/metrics') {
        actions.metrics.scrape().then(
          (text) => {
            res.writeHead(200, { 'content-type': actions.metrics.contentType });
            res.end(text);
          },
          (err: unknown) => {
            log.error({ err }, 'metrics scrape failed');
            res.writeHead(500, { 'content-type': 'text/plain' });
            res.end(`${(err as Error).message}\n`);
          },
        );
        return;
      }
      const action = req.method === 'POST' && Object.hasOwn(actionsByPath, path) ? actionsByPath[path]! : undefined;
      if (action) {
        const q = requestQuery(req.url);
        // Answered once the body is in (and bounded); what the action throws is a refusal (409).
        return readBody(req, MAX_ACTION_BODY, () => {
          const answer = (status: number, msg: string): void => {
            res.writeHead(status, { 'content-type': 'text/plain' });
            res.end(msg.endsWith('\n') ? msg : `${msg}\n`);
          };
          new Promise<string>((resolve) => resolve(action(q))).then(
            (msg) => answer(200, msg),
            (err: unknown) => answer(409, (err as Error).message),
          );
        });
      }
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found: GET /status, GET /metrics, POST /resolve?volume=V&discard=NODE, POST /verify?volume=V[&source=NODE], POST /stop, POST /volume/create?name=V&size=BYTES, POST /volume/resize?name=V&size=BYTES, POST /volume/delete?name=V[&force=1]\n');
    }),
  );
  server.on('error', (err) => log.error({ err }, 'admin endpoint error'));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(addr.port, addr.host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
