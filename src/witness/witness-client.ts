// A node's side of the witness: ask for the write grant, give it back. Every request is bounded
// in time; a witness that does not answer counts as absent. With the cluster's secret, every
// request is signed (request-signature.ts).
import type { HostPort } from '../config/units.js';
import { httpRequest } from '../net/http-request.js';
import { signatureHeaders } from './request-signature.js';
import type { WitnessAnswer } from './witness-server.js';

export class WitnessClient {
  constructor(
    private readonly addr: HostPort,
    private readonly cluster: string,
    private readonly node: string,
    private readonly timeoutMs: number,
    /** The cluster's secret (security.clusterSecret); undefined: unsigned requests. */
    private readonly secret?: Buffer,
  ) {}

  /** `brandNew`: this node's copy is brand new (witness-server.ts: refused once the cluster holds data). */
  claim(brandNew = false): Promise<WitnessAnswer> {
    return this.post('/claim', brandNew);
  }

  /** `brandNew`: as for claim (a release from a copy that is not new tells the witness the cluster holds data). */
  release(brandNew = false): Promise<WitnessAnswer> {
    return this.post('/release', brandNew);
  }

  private async post(path: string, brandNew: boolean): Promise<WitnessAnswer> {
    // Only when true: a witness from before the field refuses it (400), which leaves a new copy
    // without quorum rather than granted; every other request it still serves.
    const body = JSON.stringify({ cluster: this.cluster, node: this.node, ...(brandNew && { brandNew }) });
    const headers = this.secret === undefined ? {} : signatureHeaders(this.secret, 'POST', path, body);
    const res = await httpRequest(this.addr, 'POST', path, { jsonText: body, headers, timeoutMs: this.timeoutMs });
    if (res.status !== 200) throw new Error(`witness answered ${res.status}: ${res.body}`);
    return JSON.parse(res.body) as WitnessAnswer;
  }
}
