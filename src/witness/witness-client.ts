// A node's side of the witness: ask for the write grant, give it back. Every request is bounded
// in time; a witness that does not answer counts as absent.
import type { HostPort } from '../config/units.js';
import { httpRequest } from '../net/http-request.js';
import type { WitnessAnswer } from './witness-server.js';

export class WitnessClient {
  constructor(
    private readonly addr: HostPort,
    private readonly cluster: string,
    private readonly node: string,
    private readonly timeoutMs: number,
  ) {}

  claim(): Promise<WitnessAnswer> {
    return this.post('/claim');
  }

  release(): Promise<WitnessAnswer> {
    return this.post('/release');
  }

  private async post(path: string): Promise<WitnessAnswer> {
    const res = await httpRequest(this.addr, 'POST', path, { json: { cluster: this.cluster, node: this.node }, timeoutMs: this.timeoutMs });
    if (res.status !== 200) throw new Error(`witness answered ${res.status}: ${res.body}`);
    return JSON.parse(res.body) as WitnessAnswer;
  }
}
