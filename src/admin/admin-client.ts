// Talking to a node's admin endpoint from the command line (status, verify, resolve, stop).
import type { HostPort } from '../config/units.js';
import { httpRequest } from '../net/http-request.js';
import type { NodeStatus } from '../replication/cluster-node.js';

/** The request, with a failure to reach the node said in words an operator can act on. */
async function ask(admin: HostPort, method: 'GET' | 'POST', path: string): Promise<{ status: number; body: string }> {
  try {
    return await httpRequest(admin, method, path);
  } catch (err) {
    throw new Error(`${(err as Error).message.replace('cannot reach', 'cannot reach the admin endpoint')}: is the node running, and is this its "admin" address?`);
  }
}

/** GET /status. */
export async function fetchStatus(admin: HostPort): Promise<NodeStatus> {
  const res = await ask(admin, 'GET', '/status');
  if (res.status !== 200) throw new Error(`the admin endpoint answered ${res.status}: ${res.body.trim()}`);
  return JSON.parse(res.body) as NodeStatus;
}

/** POST an action; resolves with the node's answer, rejects with it when the node refuses. */
export async function postAction(admin: HostPort, path: string, query: Record<string, string>): Promise<string> {
  const res = await ask(admin, 'POST', `${path}?${new URLSearchParams(query)}`);
  const text = res.body.trim();
  if (res.status < 200 || res.status >= 300) throw new Error(text);
  return text;
}
