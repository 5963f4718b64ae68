// The HTTP admin endpoint of a node: GET /status answers JSON (what `nbd-mirror status` prints).
// Listens where the cluster config says (`admin`), loopback in the examples.
import http from 'node:http';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';

export function startAdminServer(addr: HostPort, status: () => unknown, log: Logger): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/status') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(status()));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found: try GET /status\n');
  });
  server.on('error', (err) => log.error({ err }, 'admin endpoint error'));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(addr.port, addr.host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
