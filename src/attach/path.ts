// One path of one volume: the attach endpoint's NBD connection to one node, its state, and
// reconnecting after a failure. States (every change through `set`, checked against the table,
// logged once with its reason):
//
//   down        no connection; another attempt after the reconnect interval
//   connecting  dialing and negotiating the export
//   ready       connected: can carry I/O
//   stalled     connected, but a request has had no reply for the I/O timeout (the node may be
//               hung); back to ready when the replies come, or down when the connection is dropped
//
// Which path carries I/O, and what happens to requests of a failed one, is attach-volume.ts.
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import { NodeConnection, type Forwarded } from './node-connection.js';
import type { NbdTlsClient } from '../security/nbd-tls-client.js';

export type PathState = 'down' | 'connecting' | 'ready' | 'stalled';

export const PATH_TRANSITIONS: Readonly<Record<PathState, readonly PathState[]>> = {
  down: ['connecting'],
  connecting: ['ready', 'down'],
  ready: ['stalled', 'down'],
  stalled: ['ready', 'down'],
};

export interface PathEvents {
  changed(path: NodePath): void;
  replied(path: NodePath, op: Forwarded): void;
  /** The connection is gone: `inFlight` had no reply (in the order sent); `byNode`: the node closed it. */
  lost(path: NodePath, reason: string, byNode: boolean, inFlight: Forwarded[]): void;
}

export interface PathTiming {
  /** A request unanswered this long makes the path `stalled`; also the handshake limit. */
  readonly ioTimeoutMs: number;
  readonly reconnectMs: number;
}

export class NodePath {
  private current: PathState = 'down';
  private conn: NodeConnection | undefined;
  private retry: NodeJS.Timeout | undefined;
  private stopped = false;
  private lastFailure: string | undefined;
  private connects = 0;
  /** Why the path is in its state (status shows it). */
  reason = 'not started';
  /** Size and transmission flags the node announced for the volume. */
  info: { size: number; flags: number } | undefined;

  constructor(
    readonly node: string,
    private readonly addr: HostPort,
    private readonly volume: string,
    private readonly timing: PathTiming,
    private readonly log: Logger,
    private readonly events: PathEvents,
    /** NBD over TLS to this node (its `tls.mode` is on or require); undefined: plain. */
    private readonly tls: NbdTlsClient | undefined,
  ) {}

  get state(): PathState {
    return this.current;
  }

  /** Requests sent on this path and not answered yet. */
  get inFlight(): number {
    return this.conn?.requestsInFlight ?? 0;
  }

  /** Some request in flight on this path changes data. */
  writesInFlight(): boolean {
    return this.conn?.writesInFlight() ?? false;
  }

  /** Connections this path has made so far: a new one means the node's old one is gone. */
  get generation(): number {
    return this.connects;
  }

  start(): void {
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    this.conn?.close('attach is stopping');
  }

  send(op: Forwarded): void {
    this.conn!.send(op);
  }

  /** Ends the connection (its requests in flight come back through `lost`). */
  drop(reason: string): void {
    this.conn?.close(reason);
  }

  /** Ready ⇄ stalled by the age of the oldest unanswered request. */
  checkStall(now: number): void {
    if (this.current !== 'ready' && this.current !== 'stalled') return;
    const oldest = this.conn!.oldestSentAt();
    const stalled = oldest !== undefined && now - oldest >= this.timing.ioTimeoutMs;
    if (stalled && this.current === 'ready') this.set('stalled', `a request has had no reply for ${now - oldest!} ms (I/O timeout ${this.timing.ioTimeoutMs} ms)`);
    else if (!stalled && this.current === 'stalled') this.set('ready', 'the node answers again');
  }

  private connect(): void {
    if (this.stopped) return;
    this.set('connecting', `dialing ${this.addr.host}:${this.addr.port}`);
    NodeConnection.open(this.addr, this.volume, this.timing.ioTimeoutMs, this.tls).then(
      (conn) => {
        if (this.stopped) return conn.close('attach is stopping');
        this.conn = conn;
        this.connects++;
        this.info = conn.info;
        conn.listen({
          replied: (op) => this.events.replied(this, op),
          closed: (reason, byNode, inFlight) => {
            // Down before anyone decides, and the requests handed over with the news (not a
            // separate `changed`): the decision sees the path down and holds its requests.
            this.conn = undefined;
            this.set('down', reason, false);
            this.later();
            this.events.lost(this, reason, byNode, inFlight);
          },
        });
        if (this.current === 'connecting') this.set('ready', 'connected, export negotiated');
      },
      (err: unknown) => {
        this.set('down', (err as Error).message);
        this.later();
      },
    );
  }

  private later(): void {
    if (this.stopped) return;
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.connect(), this.timing.reconnectMs);
  }

  private set(next: PathState, reason: string, notify = true): void {
    if (next === this.current) return;
    if (!PATH_TRANSITIONS[this.current].includes(next)) throw new Error(`path ${this.node}/${this.volume}: ${this.current} -> ${next} is not a transition`);
    const from = this.current;
    this.current = next;
    this.reason = reason;
    // A path that keeps failing to connect logs each new reason once, not one line a second.
    const repeated = from === 'connecting' && next === 'down' && reason === this.lastFailure;
    const quiet = repeated || (from === 'down' && next === 'connecting');
    if (next === 'down') this.lastFailure = reason;
    if (next === 'ready') this.lastFailure = undefined;
    if (quiet) this.log.debug({ volume: this.volume, node: this.node, from, to: next, reason }, 'path state');
    else this.log.info({ volume: this.volume, node: this.node, from, to: next, reason }, 'path state');
    if (notify) this.events.changed(this);
  }
}
