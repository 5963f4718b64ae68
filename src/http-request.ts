// Small pieces shared by the HTTP endpoints (admin, witness): every request is hostile, so the
// path is cut out of the request target by hand — `new URL` throws on targets such as "//" —
// a handler that throws answers 500 instead of ending the process, bodies are bounded, and
// refusals are logged without letting a flood of them flood the log.
import type http from 'node:http';
import type { Logger } from './log.js';

/** The path of a request target ("/status?x=1" → "/status"); never throws. */
export function requestPath(target: string | undefined): string {
  const path = (target ?? '/').split(/[?#]/, 1)[0]!;
  return path === '' ? '/' : path;
}

/** The query of a request target, as URLSearchParams (which never throws on what it is given). */
export function requestQuery(target: string | undefined): URLSearchParams {
  const q = (target ?? '').indexOf('?');
  return new URLSearchParams(q < 0 ? '' : target!.slice(q + 1).split('#', 1)[0]);
}

/** Wraps a request handler: whatever it throws is logged and answered 500; the server goes on. */
export function guardedHandler(log: Logger, handle: http.RequestListener): http.RequestListener {
  return (req, res) => guarded(log, req, res, () => handle(req, res));
}

/** Runs one step of answering a request (the handler, or a callback it left): as guardedHandler. */
export function guarded(log: Logger, req: http.IncomingMessage, res: http.ServerResponse, step: () => void): void {
  try {
    step();
  } catch (err) {
    log.error({ err, method: req.method, target: req.url }, 'HTTP request handler failed');
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'internal error' }));
  }
}

/** A refused request: the status and the words for whoever sent it. */
export interface Refusal {
  status: number;
  message: string;
}

/**
 * Requests a browser sends for a web page (they carry `Origin`) and POSTs that are not JSON (what
 * an HTML form can send without asking the server first) are refused: no page a browser shows
 * may drive these endpoints, whatever it sends.
 */
export function browserRefusal(req: http.IncomingMessage): Refusal | null {
  if (req.headers.origin !== undefined) return { status: 403, message: 'requests from web pages (with an Origin header) are refused' };
  if (req.method !== 'GET' && req.method !== 'HEAD' && !isJson(req)) return { status: 415, message: 'POST needs content-type: application/json' };
  return null;
}

function isJson(req: http.IncomingMessage): boolean {
  return (req.headers['content-type'] ?? '').split(';', 1)[0]!.trim().toLowerCase() === 'application/json';
}

/** Collects a request body of at most `maxBytes`; a longer one drops the connection unanswered. */
export function readBody(req: http.IncomingMessage, maxBytes: number, onBody: (body: Buffer) => void): void {
  const chunks: Buffer[] = [];
  let length = 0;
  req.on('data', (d: Buffer) => {
    length += d.length;
    if (length > maxBytes) return req.destroy();
    chunks.push(d);
  });
  req.on('end', () => onBody(Buffer.concat(chunks, length)));
}

/** Logs refusals as `warn`, at most one line a second, each saying how many were not logged since. */
export function refusalLog(log: Logger): (fields: Record<string, unknown>, msg: string) => void {
  let last = 0;
  let notLogged = 0;
  return (fields, msg) => {
    const now = Date.now();
    if (now - last < 1000) return void notLogged++;
    last = now;
    log.warn({ ...fields, ...(notLogged > 0 ? { refusedNotLogged: notLogged } : {}) }, msg);
    notLogged = 0;
  };
}
