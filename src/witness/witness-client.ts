// A node's side of the witness: ask for the write grant, give it back. Every request is bounded
// in time; a witness that does not answer counts as absent.
import { httpUrl, type HostPort } from '../config/units.js';
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
    const res = await fetch(httpUrl(this.addr, path), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ cluster: this.cluster, node: this.node }),
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    if (!res.ok) throw new Error(`witness answered ${res.status}: ${await res.text()}`);
    return (await res.json()) as WitnessAnswer;
  }
}
