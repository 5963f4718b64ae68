// Signed witness requests: only a node holding its cluster's secret may claim or release that
// cluster's grant. The node sends, with the JSON body,
//   x-nbd-mirror-time:      its clock, milliseconds since 1970
//   x-nbd-mirror-signature: hex HMAC-SHA256, keyed with the secret's 32 bytes, over
//                           "METHOD\nPATH\nTIME\n" followed by the body's exact bytes
// The witness takes the secret of the cluster the body names, accepts a time within ±30 s of
// its own clock, and accepts each signature once: a request seen on the wire cannot be sent
// again (a replayed release could otherwise take the grant from a node writing alone).
import { createHmac, timingSafeEqual } from 'node:crypto';
import type http from 'node:http';
import type { Refusal } from '../http-request.js';

export const TIME_HEADER = 'x-nbd-mirror-time';
export const SIGNATURE_HEADER = 'x-nbd-mirror-signature';
export const CLOCK_WINDOW_MS = 30_000;
/** Signatures remembered per cluster; two nodes asking every 500 ms use about 240 in a window. */
const MAX_SEEN_PER_CLUSTER = 4096;

function sign(secret: Buffer, method: string, path: string, time: string, body: Buffer | string): Buffer {
  return createHmac('sha256', secret).update(`${method}\n${path}\n${time}\n`).update(body).digest();
}

/** The headers that sign a request (the node's side). */
export function signatureHeaders(secret: Buffer, method: string, path: string, body: string, now = Date.now()): Record<string, string> {
  const time = String(now);
  return { [TIME_HEADER]: time, [SIGNATURE_HEADER]: sign(secret, method, path, time, body).toString('hex') };
}

/** The witness's side: checks requests against the secrets it holds, remembering what it accepted. */
export class SignatureCheck {
  /** Per cluster: accepted signatures (hex) → when their time leaves the window. */
  private readonly seen = new Map<string, Map<string, number>>();

  constructor(private readonly secrets: ReadonlyMap<string, Buffer>) {}

  /** Null when the request may go on; else why not. */
  check(cluster: string, req: http.IncomingMessage, path: string, body: Buffer, now = Date.now()): Refusal | null {
    const secret = this.secrets.get(cluster);
    if (!secret) return { status: 403, message: `unknown cluster "${cluster}": this witness has no secret for it (--secrets)` };
    const time = req.headers[TIME_HEADER];
    const sig = req.headers[SIGNATURE_HEADER];
    if (typeof time !== 'string' || !/^\d{1,15}$/.test(time) || typeof sig !== 'string' || !/^[0-9a-f]{64}$/.test(sig)) {
      return { status: 401, message: `unsigned request: ${TIME_HEADER} and ${SIGNATURE_HEADER} are missing or malformed (security.clusterSecret on the node)` };
    }
    const skew = Number(time) - now;
    if (Math.abs(skew) > CLOCK_WINDOW_MS) return { status: 401, message: `request time is ${(skew / 1000).toFixed(0)} s off the witness's clock (at most ±${CLOCK_WINDOW_MS / 1000} s): an old request, or clocks not in sync (NTP)` };
    if (!timingSafeEqual(Buffer.from(sig, 'hex'), sign(secret, req.method ?? '', path, time, body))) return { status: 401, message: `wrong signature: not signed with cluster "${cluster}"'s secret` };
    const seen = this.seen.get(cluster) ?? new Map<string, number>();
    this.seen.set(cluster, seen);
    if (seen.has(sig)) return { status: 401, message: 'replayed request: this signature was used already' };
    if (seen.size >= MAX_SEEN_PER_CLUSTER) for (const [s, until] of seen) if (until < now) seen.delete(s);
    // Only holders of the secret get here, so only they could fill this; refusing keeps it bounded.
    if (seen.size >= MAX_SEEN_PER_CLUSTER) return { status: 503, message: `more than ${MAX_SEEN_PER_CLUSTER} requests for cluster "${cluster}" within ${CLOCK_WINDOW_MS / 1000} s: try again later` };
    seen.set(sig, Number(time) + CLOCK_WINDOW_MS);
    return null;
  }
}
