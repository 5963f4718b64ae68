// One small HTTP request to a node's admin endpoint or to the witness. node:http rather than
// fetch: fetch refuses a list of "bad ports" (6000, 6665–6669, 10080, …) that an operator may
// well choose, and reports every failure as "fetch failed". A fresh connection per request (no
// keep-alive), so a node that closed an idle connection is never a failure.
import http from 'node:http';
import type { HostPort } from '../config/units.js';

export interface HttpAnswer {
  status: number;
  body: string;
}

export interface HttpRequestOptions {
  /** A JSON body, already serialized: a signature may cover its exact bytes. */
  jsonText?: string;
  headers?: Record<string, string>;
  timeoutMs?: number;
}

export function httpRequest(addr: HostPort, method: 'GET' | 'POST', path: string, opts: HttpRequestOptions = {}): Promise<HttpAnswer> {
  const payload = opts.jsonText;
  const headers = { ...opts.headers, ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) }) };
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: addr.host, port: addr.port, method, path, agent: false, headers },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => reject(new Error(`cannot reach ${addr.host}:${addr.port} (${err.code ?? err.message})`)));
    if (opts.timeoutMs !== undefined) req.setTimeout(opts.timeoutMs, () => req.destroy(Object.assign(new Error('timed out'), { code: `no answer in ${opts.timeoutMs} ms` })));
    req.end(payload);
  });
}
