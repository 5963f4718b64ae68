// The HTTP admin endpoint of a node: GET /status answers JSON (what `nbd-mirror status` prints);
// GET /metrics answers Prometheus metrics (src/admin/metrics.ts);
// POST /resolve?volume=V&discard=NODE resolves a split brain on the node named to discard;
// POST /verify?volume=V[&source=NODE] starts an online verify (with source: and repair);
// POST /stop stops the node gracefully (it tells its peer it is leaving).
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
}

/** `token`: the bearer token actions need (undefined: none, as before keys existed; a warning says so). */
export function startAdminServer(addr: HostPort, actions: AdminActions, log: Logger, token?: Buffer): Promise<http.Server> {
  if (token === undefined) log.warn('the admin endpoint has no token (security.adminToken): anyone who reaches it can stop the node or resolve a split brain; nbd-mirror keygen writes one');
  const refused = refusalLog(log);
  const actionsByPath: Record<string, (q: URLSearchParams) => string> = {
    '/resolve': (q) => actions.discard(q.get('volume') ?? '', q.get('discard') ?? ''),
    '/verify': (q) => actions.verify(q.get('volume') ?? '', q.get('source')),
    '/stop': () => actions.stop(),
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
          try {
            const msg = action(q);
            res.writeHead(200, { 'content-type': 'text/plain' });
            res.end(msg.endsWith('\n') ? msg : `${msg}\n`);
          } catch (err) {
            res.writeHead(409, { 'content-type': 'text/plain' });
            res.end(`${(err as Error).message}\n`);
          }
        });
      }
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found: GET /status, GET /metrics, POST /resolve?volume=V&discard=NODE, POST /verify?volume=V[&source=NODE], POST /stop\n');
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
