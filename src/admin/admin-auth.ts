// Who may do what on the admin endpoint. Reads (GET /status, /metrics) are open to whoever
// reaches the address (loopback unless the config says `adminPublic`), so monitoring needs no
// key; every other request is an action and, with a token configured, needs
// `Authorization: Bearer <token>`. Nothing a web page sends gets through (browserRefusal).
import { timingSafeEqual } from 'node:crypto';
import type http from 'node:http';
import { browserRefusal, type Refusal } from '../http-request.js';

const BEARER = /^Bearer ([0-9a-fA-F]{64})$/;

export function adminRefusal(req: http.IncomingMessage, token: Buffer | undefined): Refusal | null {
  const browser = browserRefusal(req);
  if (browser) return browser;
  if (req.method === 'GET' || req.method === 'HEAD' || token === undefined) return null;
  const presented = BEARER.exec(req.headers.authorization ?? '')?.[1];
  // Same length by the pattern, so the comparison takes the same time whatever matches.
  if (presented !== undefined && timingSafeEqual(Buffer.from(presented, 'hex'), token)) return null;
  return { status: 401, message: `${presented === undefined ? 'missing' : 'wrong'} admin token: actions need Authorization: Bearer <the admin token file's contents>` };
}
