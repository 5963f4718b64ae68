// The NBD listener: accepts sockets (up to a limit), gives each a Connection, and shuts down
// gracefully (stop accepting, answer requests in flight, refuse new ones with ESHUTDOWN, flush, close).
import net from 'node:net';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import { Connection } from './connection.js';
import type { SlotPool } from '../hotpath/index.js';
import { IoBudget, type BudgetLimits } from './io-budget.js';
import { adoptWithOnRead } from './receive.js';
import type { ExportRegistry } from './exports.js';
import { MAX_REQUEST } from '../protocol/constants.js';
import type { NbdTls } from '../security/nbd-tls.js';
import type { Volume } from '../volume/volume.js';

/** The server pool for request bytes beyond each connection's guarantee (see IoBudget): one largest request fits. */
export const SERVER_INFLIGHT_BYTES = MAX_REQUEST;

export const DEFAULT_BUDGET: BudgetLimits = {
  limit: SERVER_INFLIGHT_BYTES,
  guaranteed: 256 * 1024,
  share: 8 * 1024 * 1024,
  maxRequests: 256,
};

export interface ServerLimits {
  /** Connections served at once; more are refused (closed at once, logged). */
  readonly maxConnections: number;
  /** A client that takes no reply bytes for this long while replies wait is dropped. */
  readonly sendTimeoutMs: number;
  readonly budget: BudgetLimits;
}

export const DEFAULT_LIMITS: ServerLimits = { maxConnections: 4096, sendTimeoutMs: 30_000, budget: DEFAULT_BUDGET };

/** Refused connections are logged at most this often (a flood must not flood the log). */
const REFUSAL_LOG_INTERVAL_MS = 1000;

export type ListenAddress = HostPort;

export class NbdServer {
  private readonly server: net.Server;
  private readonly connections = new Set<Connection>();
  private shuttingDown = false;
  readonly budget: IoBudget;
  readonly sendTimeoutMs: number;
  private nextId = 1;
  private refused = 0;
  private lastRefusalLog = 0;

  constructor(
    readonly exports: ExportRegistry,
    /** Where payloads and READ replies live: slots of the hot path's WASM memory. */
    readonly buffers: SlotPool,
    private readonly log: Logger,
    private readonly limits: ServerLimits = DEFAULT_LIMITS,
    /** NBD over TLS (STARTTLS offered or required); undefined: off. */
    readonly tls: NbdTls | undefined = undefined,
  ) {
    this.budget = new IoBudget(limits.budget);
    this.sendTimeoutMs = limits.sendTimeoutMs;
    this.server = net.createServer({ noDelay: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    this.server.on('error', (err) => this.log.error({ err }, 'listener error'));
  }

  isShuttingDown(): boolean {
    return this.shuttingDown;
  }

  listen(addr: ListenAddress): Promise<ListenAddress> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(addr.port, addr.host, () => {
        this.server.off('error', reject);
        const a = this.server.address() as net.AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  /** Listens on a unix socket (the attach endpoint's `nbd+unix://` address for local clients). */
  listenPath(path: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(path, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  private accept(accepted: net.Socket): void {
    if (this.connections.size >= this.limits.maxConnections) return this.refuse(accepted);
    const id = this.nextId++;
    const log = this.log.child({ conn: id, remote: accepted.remoteAddress === undefined ? 'unix socket' : `${accepted.remoteAddress}:${accepted.remotePort}` });
    log.info('connection opened');
    let conn: Connection | undefined;
    const socket = adoptWithOnRead(accepted, {
      onChunk: (chunk) => conn!.receive(chunk),
      directTarget: () => conn?.directTarget(),
      onDirect: (n) => conn!.receiveDirect(n),
    });
    conn = new Connection(socket, this, log);
    this.connections.add(conn);
  }

  /** Connections serving `volume` now. */
  clientsOf(volume: Volume): Connection[] {
    return [...this.connections].filter((c) => c.serves(volume));
  }

  /**
   * Drops every connection serving `volume` (a volume deleted or resized online with --force);
   * resolves once their requests in flight are done, or after `timeoutMs`.
   */
  async disconnect(volume: Volume, reason: string, timeoutMs = 5000): Promise<void> {
    const conns = this.clientsOf(volume);
    for (const c of conns) c.drop(reason);
    await Promise.race([Promise.all(conns.map((c) => c.idle())), new Promise((resolve) => setTimeout(resolve, timeoutMs).unref())]);
  }

  closed(conn: Connection): void {
    this.connections.delete(conn);
  }

  private refuse(socket: net.Socket): void {
    this.refused++;
    const now = Date.now();
    if (now - this.lastRefusalLog >= REFUSAL_LOG_INTERVAL_MS) {
      this.lastRefusalLog = now;
      this.log.warn(
        { remote: `${socket.remoteAddress}:${socket.remotePort}`, maxConnections: this.limits.maxConnections, refusedSoFar: this.refused },
        'connection refused: the server has --max-connections connections already',
      );
    }
    socket.destroy();
  }

  /** Graceful stop: in-flight requests finish, volumes are flushed and closed. */
  async shutdown(timeoutMs = 10_000): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    this.log.info({ connections: this.connections.size }, 'shutting down');
    // Stop accepting. (Its close callback is not awaited: adopted sockets are not counted by it.)
    this.server.close();
    const drained = Promise.all([...this.connections].map((c) => c.idle()));
    const timedOut = await Promise.race([
      drained.then(() => false),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(true), timeoutMs).unref()),
    ]);
    if (timedOut) this.log.warn({ timeoutMs }, 'requests still in flight at shutdown timeout');
    await Promise.all(this.exports.volumes().map((v) => v.close()));
    await Promise.all([...this.connections].map((c) => c.close()));
    this.log.info('shut down');
  }
}
