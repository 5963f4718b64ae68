// The NBD listener: accepts sockets, gives each a Connection, and shuts down gracefully
// (stop accepting, answer requests in flight, refuse new ones with ESHUTDOWN, flush, close).
import net from 'node:net';
import type { HostPort } from '../config/units.js';
import type { Logger } from '../log.js';
import { Connection } from './connection.js';
import type { SlotPool } from '../hotpath/index.js';
import { IoBudget } from './io-budget.js';
import { adoptWithOnRead } from './receive.js';

/** Request bytes in flight across all connections before they stop reading (see IoBudget). */
export const SERVER_INFLIGHT_BYTES = 32 * 1024 * 1024;
import type { ExportRegistry } from './exports.js';

export type ListenAddress = HostPort;

export class NbdServer {
  private readonly server: net.Server;
  private readonly connections = new Set<Connection>();
  private shuttingDown = false;
  readonly budget = new IoBudget(SERVER_INFLIGHT_BYTES);
  private nextId = 1;

  constructor(
    readonly exports: ExportRegistry,
    /** Where payloads and READ replies live: slots of the hot path's WASM memory. */
    readonly buffers: SlotPool,
    private readonly log: Logger,
  ) {
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

  private accept(accepted: net.Socket): void {
    const id = this.nextId++;
    const log = this.log.child({ conn: id, remote: `${accepted.remoteAddress}:${accepted.remotePort}` });
    log.info('connection opened');
    let conn: Connection | undefined;
    const socket = adoptWithOnRead(accepted, {
      onChunk: (chunk) => conn!.receive(chunk),
      directTarget: () => conn?.directTarget(),
      onDirect: (n) => conn!.receiveDirect(n),
    });
    conn = new Connection(socket, this, log);
    this.connections.add(conn);
    socket.once('close', () => this.connections.delete(conn));
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
