// A running resync, either role: what both roles know of it (progress, whether the peer's
// dirty runs have arrived) and what the status shows.
import type { Done } from '../volume/volume.js';

export type ResyncRole = 'source' | 'target';

export interface ResyncProgress {
  role: ResyncRole;
  /** Blocks are compared by digest first and only differing ones are copied. */
  checksum: boolean;
  totalBytes: number;
  doneBytes: number;
}

export class ResyncRun implements ResyncProgress {
  totalBytes = 0;
  doneBytes = 0;
  /** The peer's dirty runs (its frame flagged last) have arrived: both hold the union of the bits. */
  peerRunsIn = false;

  constructor(
    readonly role: ResyncRole,
    readonly checksum: boolean,
    readonly onDone: Done,
  ) {}

  get progress(): ResyncProgress {
    return { role: this.role, checksum: this.checksum, totalBytes: this.totalBytes, doneBytes: this.doneBytes };
  }
}
