// Talking to a node's admin endpoint from the command line (status, verify, resolve, stop).
import type { HostPort } from '../config/units.js';
import { httpRequest, type HttpRequestOptions } from '../net/http-request.js';
import type { NodeStatus } from '../replication/cluster-node.js';

/** Where a node's admin endpoint is, and the token its actions need (admin-target.ts finds both). */
export interface AdminTarget {
  addr: HostPort;
  /** The admin token (its file's 64 hex digits); undefined for a node without one. */
  token?: string;
}

/** The request, with a failure to reach the node said in words an operator can act on. */
async function ask(admin: HostPort, method: 'GET' | 'POST', path: string, opts?: HttpRequestOptions): Promise<{ status: number; body: string }> {
  try {
    return await httpRequest(admin, method, path, opts);
  } catch (err) {
    throw new Error(`${(err as Error).message.replace('cannot reach', 'cannot reach the admin endpoint')}: is the node running, and is this its "admin" address?`);
  }
}

/** GET /status (`timeoutMs`: give up on a node that does not answer, e.g. a hung one). */
export async function fetchStatus(admin: HostPort, timeoutMs?: number): Promise<NodeStatus> {
  const res = await ask(admin, 'GET', '/status', { timeoutMs });
  if (res.status !== 200) throw new Error(`the admin endpoint answered ${res.status}: ${res.body.trim()}`);
  return JSON.parse(res.body) as NodeStatus;
}

/** POST an action; resolves with the node's answer, rejects with it when the node refuses. */
export async function postAction(admin: AdminTarget, path: string, query: Record<string, string>): Promise<string> {
  const headers: Record<string, string> = admin.token === undefined ? {} : { authorization: `Bearer ${admin.token}` };
  const res = await ask(admin.addr, 'POST', `${path}?${new URLSearchParams(query)}`, { jsonText: '{}', headers });
  const text = res.body.trim();
  if (res.status === 401) throw new Error('the admin endpoint refused the request: missing or wrong token (see --config/--token-file)');
  if (res.status < 200 || res.status >= 300) throw new Error(text);
  return text;
}
