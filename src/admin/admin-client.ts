// Talking to a node's admin endpoint from the command line (status, verify, resolve).
import { httpUrl, type HostPort } from '../config/units.js';
import type { VolumeStatus } from '../replication/cluster-node.js';

export interface NodeStatus {
  node: string;
  volumes: Record<string, VolumeStatus>;
}

/** GET /status. A kept-alive connection the node closed while idle fails once; one retry on a fresh one. */
export async function fetchStatus(admin: HostPort): Promise<NodeStatus> {
  const get = () => fetch(httpUrl(admin, '/status'));
  const res = await get().catch(get);
  return (await res.json()) as NodeStatus;
}

/** POST an action; resolves with the node's answer, rejects with it when the node refuses. */
export async function postAction(admin: HostPort, path: string, query: Record<string, string>): Promise<string> {
  const res = await fetch(httpUrl(admin, `${path}?${new URLSearchParams(query)}`), { method: 'POST' });
  const text = (await res.text()).trim();
  if (!res.ok) throw new Error(text);
  return text;
}
