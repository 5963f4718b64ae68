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
// A volume grown online (`renew`): a ready path opens a second connection, which negotiates the
// new size; once it is up, new requests go to it and the old one only answers what it has, then
// closes — no request waits or is sent twice, and the path's state does not change. Should the
// old connection be lost with requests in flight, the path is lost as a whole (both connections,
// all their requests handed back together), as if it had one connection.
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
  /** The connection a renewal replaced: it answers its requests in flight, then closes. */
  private retiring: NodeConnection | undefined;
  /** Requests of a lost retiring connection, handed back with the path's own when it goes down. */
  private orphans: Forwarded[] = [];
  private renewing = false;
  private renewedAt = 0;
  private retry: NodeJS.Timeout | undefined;
  private stopped = false;
  private lastFailure: string | undefined;
  private connects = 0;
  /** Why the path is in its state (status shows it). */
  reason = 'not started';
  /** Size and transmission flags the node announced for the volume (on the connection now used). */
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
    return (this.conn?.requestsInFlight ?? 0) + (this.retiring?.requestsInFlight ?? 0);
  }

  /** Some request in flight on this path changes data. */
  writesInFlight(): boolean {
    return (this.conn?.writesInFlight() ?? false) || (this.retiring?.writesInFlight() ?? false);
  }

  /** Connections this path has made so far (renewals not counted): a new one means the node's old one is gone. */
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

  /**
   * Negotiates the export again on a second connection (the node serves the volume larger than
   * this path's connection negotiated) and moves to it once it is up; nothing is held meanwhile.
   * Only a ready path with no renewal under way; a failure leaves the path on its connection.
   * At most one per reconnect interval: a node's status gives the new size a moment before the
   * node offers it (it grows, then offers), so a renewal may find the old size and be asked again.
   */
  renew(reason: string): void {
    if (this.stopped || this.renewing || this.retiring || this.current !== 'ready') return;
    if (Date.now() - this.renewedAt < this.timing.reconnectMs) return;
    this.renewedAt = Date.now();
    this.renewing = true;
    this.log.info({ volume: this.volume, node: this.node, size: this.info?.size, reason }, 'path renegotiating the export');
    NodeConnection.open(this.addr, this.volume, this.timing.ioTimeoutMs, this.tls).then(
      (conn) => {
        this.renewing = false;
        const old = this.conn;
        if (this.stopped || !old || this.current === 'down' || this.current === 'connecting') return conn.close('the path it was to renew is gone');
        this.retiring = old;
        this.use(conn);
        this.log.info({ volume: this.volume, node: this.node, size: conn.info!.size, retiringInFlight: old.requestsInFlight }, 'path renewed: new requests on the new connection, the old one drains');
        if (old.requestsInFlight === 0) old.close('renewed, nothing in flight');
        this.events.changed(this);
      },
      (err: unknown) => {
        this.renewing = false;
        this.log.warn({ volume: this.volume, node: this.node, reason: (err as Error).message }, 'path renewal failed: the path stays on its connection');
      },
    );
  }

  /** Ends the connection (its requests in flight come back through `lost`). */
  drop(reason: string): void {
    this.conn?.close(reason);
  }

  /** Ready ⇄ stalled by the age of the oldest unanswered request. */
  checkStall(now: number): void {
    if (this.current !== 'ready' && this.current !== 'stalled') return;
    const times = [this.conn!.oldestSentAt(), this.retiring?.oldestSentAt()].filter((t) => t !== undefined);
    const oldest = times.length > 0 ? Math.min(...times) : undefined;
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
        this.connects++;
        this.use(conn);
        if (this.current === 'connecting') this.set('ready', 'connected, export negotiated');
      },
      (err: unknown) => {
        this.set('down', (err as Error).message);
        this.later();
      },
    );
  }

  /** Makes `conn` the path's connection; replies of both it and a retiring one reach the volume. */
  private use(conn: NodeConnection): void {
    this.conn = conn;
    this.info = conn.info;
    conn.listen({
      replied: (op) => {
        this.events.replied(this, op);
        if (conn === this.retiring && conn.requestsInFlight === 0) conn.close('renewed, drained');
      },
      closed: (reason, byNode, inFlight) => (conn === this.conn ? this.connectionLost(reason, byNode, inFlight) : this.retiredClosed(conn, reason, inFlight)),
    });
  }

  private connectionLost(reason: string, byNode: boolean, inFlight: Forwarded[]): void {
    this.conn = undefined;
    this.retiring?.close(reason); // its requests join `orphans` (retiredClosed)
    const all = [...this.orphans, ...inFlight];
    this.orphans = [];
    // Down before anyone decides, and the requests handed over with the news (not a separate
    // `changed`): the decision sees the path down and holds its requests.
    this.set('down', reason, false);
    this.later();
    this.events.lost(this, reason, byNode, all);
  }

  private retiredClosed(conn: NodeConnection, reason: string, inFlight: Forwarded[]): void {
    if (conn === this.retiring) this.retiring = undefined;
    if (inFlight.length === 0) return;
    this.orphans.push(...inFlight);
    // Requests lost on the old connection: the path is lost as a whole, so that the re-send rule decides them all.
    this.conn?.close(`the connection a renewal replaced was lost with requests in flight: ${reason}`);
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
