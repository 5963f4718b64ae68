// The HTTP admin endpoint of a node: GET /status answers JSON (what `nbd-mirror status` prints);
// GET /metrics answers Prometheus metrics (src/admin/metrics.ts);
// POST /resolve?volume=V&discard=NODE resolves a split brain on the node named to discard;
// POST /verify?volume=V[&source=NODE] starts an online verify (with source: and repair);
// POST /stop stops the node gracefully (it tells its peer it is leaving).
// Listens where the cluster config says (`admin`): keep it on loopback or a management network.
import http from 'node:http';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import type { NodeMetrics } from './metrics.js';
import { guardedHandler, requestPath, requestQuery } from '../http-request.js';

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

export function startAdminServer(addr: HostPort, actions: AdminActions, log: Logger): Promise<http.Server> {
  const server = http.createServer(
    guardedHandler(log, (req, res) => {
      const path = requestPath(req.url);
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
      const q = requestQuery(req.url);
      const act = (fn: () => string): void => {
        try {
          const msg = fn();
          res.writeHead(200, { 'content-type': 'text/plain' });
          res.end(msg.endsWith('\n') ? msg : `${msg}\n`);
        } catch (err) {
          res.writeHead(409, { 'content-type': 'text/plain' });
          res.end(`${(err as Error).message}\n`);
        }
      };
      if (req.method === 'POST' && path === '/resolve') return act(() => actions.discard(q.get('volume') ?? '', q.get('discard') ?? ''));
      if (req.method === 'POST' && path === '/verify') return act(() => actions.verify(q.get('volume') ?? '', q.get('source')));
      if (req.method === 'POST' && path === '/stop') return act(() => actions.stop());
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
