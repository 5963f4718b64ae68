// What the attach endpoint knows of a node: its admin status (GET /status), polled. The fail-over
// rule reads it (attach-volume.ts): a write in flight on a failed path is sent again only to a
// node that says it writes the volume alone. A node that does not answer within the poll
// interval (dead, hung, unreachable) has no status: nothing is decided on old news.
import { fetchStatus } from '../admin/admin-client.js';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import type { NodeStatus, VolumeStatus } from '../replication/cluster-node.js';

export class NodeWatch {
  private last: NodeStatus | undefined;
  private lastAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private asking = false;
  private failing = false;

  constructor(
    readonly node: string,
    private readonly admin: HostPort,
    private readonly intervalMs: number,
    private readonly log: Logger,
    /** Called after every poll, answered or not. */
    private readonly onPoll: () => void,
  ) {}

  start(): void {
    this.poll();
    this.timer = setInterval(() => this.poll(), this.intervalMs);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** The node's volumes (it may have created or deleted some online), while it answers. */
  volumeNames(): string[] {
    return this.answering ? Object.keys(this.last!.volumes) : [];
  }

  /** At least one poll has failed since start (attach's start-up stops waiting for this node). */
  get failedOnce(): boolean {
    return this.failing;
  }

  /** The node answered within the last few polls. */
  get answering(): boolean {
    return this.last !== undefined && Date.now() - this.lastAt <= 3 * this.intervalMs;
  }

  /** The node's status of `volume`, if it answered within the last few polls. */
  volume(volume: string): VolumeStatus | undefined {
    return this.answering ? this.last!.volumes[volume] : undefined;
  }

  private poll(): void {
    if (this.asking) return; // the last one has not come back yet (a hung node): no pile-up
    this.asking = true;
    fetchStatus(this.admin, this.intervalMs * 2).then(
      (s) => {
        this.asking = false;
        this.last = s;
        this.lastAt = Date.now();
        if (this.failing) this.log.info({ node: this.node }, 'node status answers again');
        this.failing = false;
        this.onPoll();
      },
      (err: unknown) => {
        this.asking = false;
        this.last = undefined;
        if (!this.failing) this.log.warn({ node: this.node, reason: (err as Error).message }, 'node status does not answer');
        this.failing = true;
        this.onPoll();
      },
    );
  }
}
