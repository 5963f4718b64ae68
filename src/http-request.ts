// Small pieces shared by the HTTP endpoints (admin, witness): every request is hostile, so the
// path is cut out of the request target by hand — `new URL` throws on targets such as "//" —
// and a handler that throws answers 500 instead of ending the process.
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
  return (req, res) => {
    try {
      handle(req, res);
    } catch (err) {
      log.error({ err, method: req.method, target: req.url }, 'HTTP request handler failed');
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'internal error' }));
    }
  };
}
