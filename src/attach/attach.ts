// `nbd-mirror attach`: the host-side endpoint. Local clients (qemu, nbd-client, libnbd tools,
// fio) attach to it over loopback TCP or a unix socket; every volume of the cluster is served
// under its own name by the server's own listener and Connection (src/server/), whose Volume
// is an AttachVolume forwarding to one of the two nodes (attach-volume.ts). Each node's admin
// status is polled (node-watch.ts) for the fail-over and fail-back decisions; attach's own
// status is JSON on a small HTTP endpoint (`nbd-mirror status --attach ADDR`).
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import http from 'node:http';
import { resolve } from 'node:path';
import { ConfigError, type ClusterConfig } from '../config/cluster.js';
import { NbdTlsClient } from '../security/nbd-tls-client.js';
import type { HostPort } from '../config/units.js';
import { reachable } from '../admin/admin-target.js';
import { Hotpath } from '../hotpath/index.js';
import type { Logger } from '../log.js';
import { formatSize } from '../config/units.js';
import { guardedHandler, requestPath } from '../http-request.js';
import { ExportRegistry } from '../server/exports.js';
import { DEFAULT_LIMITS, NbdServer, SERVER_INFLIGHT_BYTES, type ServerLimits } from '../server/server.js';
import { AttachVolume, capabilitiesFrom, type AttachVolumeStatus } from './attach-volume.js';
import { NodeWatch } from './node-watch.js';
import { NodePath } from './path.js';

/** Where local clients attach: a TCP address (loopback, normally) or a unix socket path. */
export type AttachListen = { kind: 'tcp'; addr: HostPort } | { kind: 'unix'; path: string };

export interface AttachStatus {
  attach: true;
  /** Each node's admin status answered within the last polls. */
  nodes: Record<string, { reachable: boolean }>;
  volumes: Record<string, AttachVolumeStatus>;
}

export interface AttachOptions {
  readonly config: ClusterConfig;
  /** The config file's folder: `attach.tls` paths are relative to it. */
  readonly configDir: string;
  readonly listen: readonly AttachListen[];
  /** attach's own status endpoint (GET /status), loopback; undefined: none. */
  readonly admin?: HostPort;
  /** How long start-up waits for one node to serve each volume. */
  readonly startTimeoutMs: number;
  readonly limits?: ServerLimits;
  readonly log: Logger;
}

export interface RunningAttach {
  /** The addresses listened on (TCP ports as the kernel picked them). */
  readonly listening: AttachListen[];
  readonly adminPort: number | undefined;
  status(): AttachStatus;
  stop(): Promise<void>;
}

/** Parses a --listen value: HOST:PORT, or unix:PATH / an absolute PATH for a unix socket. */
export function parseAttachListen(text: string, parseHostPort: (t: string) => HostPort): AttachListen {
  if (text.startsWith('unix:')) return { kind: 'unix', path: text.slice(5) };
  if (text.startsWith('/')) return { kind: 'unix', path: text };
  return { kind: 'tcp', addr: parseHostPort(text) };
}

export async function startAttach(o: AttachOptions): Promise<RunningAttach> {
  const { config, log } = o;
  const nodeNames = Object.keys(config.nodes);
  /** Every volume attach knows, by name; `registered`: offered to local clients. */
  const volumes = new Map<string, AttachVolume>();
  const registered = new Set<string>();
  const registry = new ExportRegistry();
  const watches = new Map<string, NodeWatch>();
  const timing = { ioTimeoutMs: config.attach.ioTimeout, reconnectMs: config.attach.reconnectInterval };
  const tlsFor = nodeTls(config, o.configDir, log);
  const attachLog = log.child({ component: 'attach' });

  const addVolume = (name: string): void => {
    const preferred = config.volumes[name]?.preferredNode ?? nodeNames[0]!;
    const v = new AttachVolume(name, preferred, (node) => watches.get(node)!.volume(name), attachLog, 2 * config.attach.statusInterval, offerGrown);
    // The preferred path first: it is dialed first and its flags are the export's.
    const order = [preferred, ...nodeNames.filter((n) => n !== preferred)];
    v.attachPaths(order.map((n) => new NodePath(n, reachable(config.nodes[n]!.nbd), name, timing, log.child({ component: 'path' }), v, tlsFor.get(n))));
    volumes.set(name, v);
    for (const p of v.paths) p.start();
  };
  const offer = (v: AttachVolume) => registry.add(v.name, v, `nbd-mirror volume ${v.name} (${formatSize(v.size)}) through attach, preferred node ${v.preferred}`);
  /** The volume grew online: new local clients negotiate the new size; open connections keep theirs. */
  function offerGrown(v: AttachVolume): void {
    if (!registered.has(v.name)) return;
    registry.remove(v.name);
    offer(v);
  }
  /** Offers a volume to local clients once a node has told its size and flags. */
  const register = (v: AttachVolume): boolean => {
    if (registered.has(v.name)) return true;
    const ready = v.paths.find((p) => p.info !== undefined);
    if (!ready) return false;
    v.describe(ready.info!.size, capabilitiesFrom(ready.info!.flags));
    offer(v);
    registered.add(v.name);
    attachLog.info({ volume: v.name, size: v.size, preferred: v.preferred }, 'volume served');
    return true;
  };
  /**
   * The nodes' volumes are the truth (they are created, grown and deleted online, recorded in
   * each node's volumes.json): a volume a node lists that attach does not know is added; one that
   * every node answers without is no longer offered, and its held requests fail (ESHUTDOWN).
   */
  const discover = (): void => {
    const answering = [...watches.values()].filter((w) => w.answering);
    const listed = new Set(answering.flatMap((w) => w.volumeNames()));
    for (const name of listed) if (!volumes.has(name)) addVolume(name);
    if (answering.length === watches.size) {
      for (const [name, v] of volumes) {
        if (listed.has(name)) continue;
        attachLog.warn({ volume: name }, 'no node serves this volume any more (deleted online?): no longer offered');
        if (registered.delete(name)) registry.remove(name);
        volumes.delete(name);
        void v.close();
      }
    }
    for (const v of volumes.values()) register(v);
  };
  let started = false;
  const onPoll = () => {
    if (started) discover();
    for (const v of volumes.values()) v.evaluate();
  };
  for (const n of nodeNames) watches.set(n, new NodeWatch(n, reachable(config.nodes[n]!.admin), config.attach.statusInterval, log.child({ component: 'node-watch' }), onPoll));
  for (const w of watches.values()) w.start();

  // Which volumes: what the nodes list (online volumes included), else the config's.
  const deadline = Date.now() + o.startTimeoutMs;
  while (Date.now() < deadline && [...watches.values()].some((w) => !w.answering && !w.failedOnce)) await new Promise((r) => setTimeout(r, 50));
  const listed = [...watches.values()].filter((w) => w.answering).flatMap((w) => w.volumeNames());
  for (const name of new Set(listed.length > 0 ? listed : Object.keys(config.volumes)).values()) addVolume(name);

  // The exports' sizes and flags come from a node's answer: wait for one path of each volume.
  for (const v of [...volumes.values()].sort((x, y) => x.name.localeCompare(y.name))) {
    while (!register(v)) {
      if (Date.now() > deadline) {
        await stopAll();
        throw new Error(`no node served volume "${v.name}" within ${o.startTimeoutMs} ms (${v.paths.map((p) => `${p.node}: ${p.reason}`).join('; ')})`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  started = true;

  // Slots for payloads and READ replies, as a node sizes them: the server budget twice over.
  const hot = Hotpath.create({ slotArenaBytes: 2 * SERVER_INFLIGHT_BYTES });
  const servers: NbdServer[] = [];
  const listening: AttachListen[] = [];
  for (const l of o.listen) {
    const server = new NbdServer(registry, hot.slots, log, o.limits ?? DEFAULT_LIMITS, undefined);
    servers.push(server);
    if (l.kind === 'tcp') listening.push({ kind: 'tcp', addr: await server.listen(l.addr) });
    else {
      removeStaleSocket(l.path);
      await server.listenPath(l.path);
      listening.push(l);
    }
  }
  // The I/O timeout is checked a few times per timeout.
  const tick = setInterval(() => volumes.forEach((v) => v.tick(Date.now())), Math.max(20, Math.min(250, config.attach.ioTimeout / 4)));

  const status = (): AttachStatus => ({
    attach: true,
    nodes: Object.fromEntries([...watches].map(([n, w]) => [n, { reachable: w.answering }])),
    volumes: Object.fromEntries([...volumes.values()].map((v) => [v.name, v.status()])),
  });
  let admin: http.Server | undefined;
  if (o.admin) admin = await startStatusEndpoint(o.admin, status, log);

  async function stopAll(): Promise<void> {
    for (const w of watches.values()) w.stop();
    for (const v of volumes.values()) await v.close();
  }

  return {
    listening,
    adminPort: admin ? (admin.address() as { port: number }).port : undefined,
    status,
    stop: async () => {
      clearInterval(tick);
      admin?.close();
      // Requests in flight finish (the paths stay up until each server has drained), then the paths close.
      await Promise.all(servers.map((s) => s.shutdown()));
      await stopAll();
      for (const l of listening) if (l.kind === 'unix') removeStaleSocket(l.path);
    },
  };
}

/**
 * The TLS client each node needs: nodes that serve NBD over TLS get `attach.tls`; a node that
 * requires TLS while attach has no credentials is a config error (said at start, not at the first path).
 */
function nodeTls(config: ClusterConfig, configDir: string, log: Logger): Map<string, NbdTlsClient> {
  const out = new Map<string, NbdTlsClient>();
  const s = config.attach.tls;
  const client = s && NbdTlsClient.load({ ...s, psk: s.psk && resolve(configDir, s.psk), certificates: s.certificates && resolve(configDir, s.certificates) });
  for (const [name, n] of Object.entries(config.nodes)) {
    if (n.tls.mode === 'off') continue;
    if (client) out.set(name, client);
    else if (n.tls.mode === 'require') throw new ConfigError(`node ${name} requires NBD over TLS (nodes.${name}.tls.mode): give attach its credentials in attach.tls (docs/CONFIG.md)`);
    else log.warn({ node: name }, 'the node offers NBD over TLS but attach.tls is not set: its paths are not encrypted');
  }
  return out;
}

/** A socket file left by an earlier run would make listen fail with EADDRINUSE; anything else at the path is left alone. */
function removeStaleSocket(path: string): void {
  if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
}

/** GET /status: attach's paths as JSON. Read-only, so no token; listens where --admin says (loopback by default). */
function startStatusEndpoint(addr: HostPort, status: () => AttachStatus, log: Logger): Promise<http.Server> {
  const server = http.createServer(
    guardedHandler(log, (req, res) => {
      if (req.method === 'GET' && requestPath(req.url) === '/status') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(status()));
        return;
      }
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('attach serves GET /status only\n');
    }),
  );
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(addr.port, addr.host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
