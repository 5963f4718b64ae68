#!/usr/bin/env node
// Command-line entry: parses arguments and calls into the modules; nothing below imports this.
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { startAdminServer } from './admin/admin-server.js';
import { parseAttachListen, startAttach, type AttachListen, type AttachStatus } from './attach/attach.js';
import { httpRequest } from './net/http-request.js';
import { fetchStatus, postAction } from './admin/admin-client.js';
import { adminTarget, type AdminTargetOptions } from './admin/admin-target.js';
import { runVerify } from './admin/verify-command.js';
import { createMetrics } from './admin/metrics.js';
import { startWitness } from './witness/witness-server.js';
import { loadWitnessSecrets } from './witness/witness-secrets.js';
import { readClusterKey } from './security/cluster-keys.js';
import { clientNameRefusal, keygen, type ExistingKeys } from './security/keygen.js';
import { loadClusterConfig } from './config/cluster.js';
import { createLogger, LOG_LEVELS, type Logger } from './log.js';
import { ClusterNode } from './replication/cluster-node.js';
import { ExportRegistry } from './server/exports.js';
import { Hotpath } from './hotpath/index.js';
import { DEFAULT_LIMITS, NbdServer, SERVER_INFLIGHT_BYTES, type ListenAddress, type ServerLimits } from './server/server.js';
import { formatSize, parseDuration, parseHostPort, parseSize } from './config/units.js';
import { FaultFile } from './volume/fault-file.js';
import { FileVolume, type IoMode } from './volume/file-volume.js';
import { Pool } from './volume/pool/pool.js';
import { checkPoolFile } from './volume/pool/replay.js';
import { NbdTls, type NbdTlsSettings } from './security/nbd-tls.js';
import type { TlsMode } from './protocol/handshake.js';

interface ExportArg {
  readonly name: string;
  readonly path: string;
}

/** Wraps a parser so its errors become commander's "invalid argument" messages. */
function argParser<T>(parse: (v: string, previous: T) => T): (v: string, previous: T) => T {
  return (v, previous) => {
    try {
      return parse(v, previous);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}

function parseExport(text: string, previous: ExportArg[] = []): ExportArg[] {
  const eq = text.indexOf('=');
  const name = text.slice(0, eq);
  const path = text.slice(eq + 1);
  if (eq <= 0 || !path) throw new Error(`"${text}" is not NAME=PATH (example: disk=data/disk.img)`);
  return [...previous, { name, path }];
}

/** A whole number of at least 1. */
function parseCount(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < 1) throw new Error(`"${text}" is not a whole number of at least 1`);
  return n;
}

/** Seconds ("30", "2.5"), or a duration with its unit ("500ms", "1m"); returns milliseconds. */
function parseSeconds(text: string): number {
  return /^\s*\d+(?:\.\d+)?\s*$/.test(text) ? parseDuration(`${text.trim()}s`) : parseDuration(text);
}

/** NAME=SIZE of a thin volume (serve --pool). */
function parseThin(text: string, previous: Array<{ name: string; size: number }> = []): Array<{ name: string; size: number }> {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new Error(`"${text}" is not NAME=SIZE (example: disk=10G)`);
  return [...previous, { name: text.slice(0, eq), size: parseSize(text.slice(eq + 1)) }];
}

interface ServeOptions {
  listen?: ListenAddress;
  export?: ExportArg[];
  pool?: string;
  poolSize?: number;
  poolUnit?: number;
  poolOnFull?: 'error' | 'queue';
  poolHold?: number;
  thin?: Array<{ name: string; size: number }>;
  config?: string;
  node?: string;
  size?: number;
  readOnly: boolean;
  logLevel: (typeof LOG_LEVELS)[number];
  io: IoMode;
  maxConnections: number;
  sendTimeout: number;
  testFaults?: string;
  tls?: TlsMode;
  tlsCertificates?: string;
  tlsVerifyPeer?: boolean;
  tlsPsk?: string;
}

/** TLS settings with their paths made absolute from `base` (the working directory, or the config file's folder). */
function loadTls(s: NbdTlsSettings, base: string): NbdTls | undefined {
  const at = (path: string | undefined) => (path === undefined ? undefined : resolve(base, path));
  return NbdTls.load({ ...s, certificates: at(s.certificates), psk: at(s.psk) });
}

/** The --tls flags of a standalone serve. */
function tlsFromFlags(opts: ServeOptions): NbdTls | undefined {
  const mode = opts.tls ?? 'off';
  if (mode === 'off' && (opts.tlsCertificates ?? opts.tlsPsk ?? opts.tlsVerifyPeer) !== undefined) {
    throw new Error('--tls-certificates, --tls-psk and --tls-verify-peer need --tls on or --tls require');
  }
  return loadTls({ mode, certificates: opts.tlsCertificates, verifyPeer: opts.tlsVerifyPeer, psk: opts.tlsPsk }, process.cwd());
}

function serverLimits(opts: ServeOptions): ServerLimits {
  return { ...DEFAULT_LIMITS, maxConnections: opts.maxConnections, sendTimeoutMs: opts.sendTimeout };
}

async function serve(opts: ServeOptions): Promise<void> {
  const log = createLogger(opts.logLevel);
  // Only with the flag are volumes wrapped: no layer, no cost otherwise.
  const faults = opts.testFaults === undefined ? undefined : new FaultFile(resolve(opts.testFaults), log.child({ component: 'faults' }));
  if (opts.config !== undefined || opts.node !== undefined) return serveClusterNode(opts, log, faults);
  if (!opts.listen || !(opts.export ?? opts.thin)) throw new Error('give --listen and --export (or --pool and --thin), or --config and --node');
  if (opts.pool === undefined && (opts.thin ?? opts.poolSize ?? opts.poolUnit) !== undefined) throw new Error('--thin, --pool-size and --pool-unit need --pool');
  if (opts.pool !== undefined && opts.export !== undefined) throw new Error('with --pool every export is a thin volume: name them with --thin NAME=SIZE');
  const tls = tlsFromFlags(opts);
  const registry = new ExportRegistry();
  // WASM memory is sized here, once: room for every request in flight (the server budget) plus
  // the partly received payload of each connection.
  const hot = Hotpath.create({ slotArenaBytes: 2 * SERVER_INFLIGHT_BYTES });
  let pool: Pool | undefined;
  if (opts.pool !== undefined) {
    const path = resolve(opts.pool);
    pool = Pool.open(path, { size: opts.poolSize, unitSize: opts.poolUnit, onFull: opts.poolOnFull, holdMs: opts.poolHold, volumes: opts.thin ?? [], log: log.child({ component: 'pool' }), hot });
    for (const t of opts.thin ?? []) {
      const volume = pool.volume(t.name);
      registry.add(t.name, faults?.wrap(t.name, volume) ?? volume, `nbd-mirror thin volume ${t.name} (${formatSize(volume.size)})`);
      log.info({ export: t.name, pool: path, size: volume.size, allocatedBytes: volume.allocatedBytes() }, 'export ready');
    }
    process.on('SIGHUP', () => growOnSignal(pool!, opts.poolSize, log));
  }
  for (const e of opts.export ?? []) {
    const path = resolve(e.path);
    if (opts.size !== undefined) mkdirSync(dirname(path), { recursive: true });
    const volume = FileVolume.open(path, { createSize: opts.size, readOnly: opts.readOnly, io: opts.io });
    if (opts.size !== undefined && volume.size !== opts.size) {
      log.warn({ export: e.name, path, size: volume.size, requested: opts.size }, 'file exists with another size; serving it as it is');
    }
    registry.add(e.name, faults?.wrap(e.name, volume) ?? volume, `nbd-mirror export ${e.name} (${formatSize(volume.size)})`);
    log.info({ export: e.name, path, size: volume.size, readOnly: opts.readOnly, io: opts.io }, 'export ready');
  }
  faults?.start();
  const server = new NbdServer(registry, hot.slots, log, serverLimits(opts), tls);
  const addr = await server.listen(opts.listen);
  log.info({ address: addr.host, port: addr.port, tls: tls?.mode ?? 'off' }, 'listening');
  printAttachHelp(addr, registry, tls);
  stopOnSignals(log, async () => {
    await server.shutdown();
    await pool?.close();
  });
}

/**
 * SIGHUP on a standalone pool: it grows to the size written in `<pool>.size` (one line, e.g.
 * "20G"), so an operator raises it online without a restart (a cluster node re-reads its config).
 */
function growOnSignal(pool: Pool, startSize: number | undefined, log: Logger): void {
  let size = startSize;
  try {
    size = parseSize(readFileSync(`${pool.path}.size`, 'utf8').trim());
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return log.error({ err: (err as Error).message }, `cannot read ${pool.path}.size; the pool keeps its size`);
  }
  if (size === undefined) return log.info('SIGHUP: no new pool size (write one to <pool>.size)');
  pool.grow(size, (err) => err && log.error({ err: err.message }, 'pool not grown'));
}

/** One node of a mirrored pair, as the cluster config describes it (issue 4, in progress). */
async function serveClusterNode(opts: ServeOptions, log: Logger, faults: FaultFile | undefined): Promise<void> {
  if (!opts.config || !opts.node) throw new Error('--config and --node go together');
  if ((opts.tls ?? opts.tlsCertificates ?? opts.tlsPsk ?? opts.tlsVerifyPeer) !== undefined) {
    throw new Error(`with --config, NBD TLS is set per node in the config (nodes.${opts.node}.tls), not by --tls flags`);
  }
  const config = loadClusterConfig(opts.config);
  const adminToken = readClusterKey(config, dirname(resolve(opts.config)), 'adminToken');
  log = log.child({ node: opts.node });
  const configDir = dirname(resolve(opts.config));
  const self = config.nodes[opts.node];
  // Before the node opens anything: a missing key file is a config error, not a half-started node.
  const tls = self && loadTls(self.tls, configDir);
  const node = new ClusterNode(config, opts.node, configDir, 2 * SERVER_INFLIGHT_BYTES, log, faults?.wrap);
  faults?.start();
  const registry = new ExportRegistry();
  const server = new NbdServer(registry, node.hot.slots, log, serverLimits(opts), tls);
  // Volumes created online are served at once; deleted ones stop being offered.
  node.serveOn({
    add: (name, volume, description) => void registry.add(name, volume, description),
    remove: (name) => registry.remove(name),
    clients: (volume) => server.clientsOf(volume).length,
    disconnect: (volume, reason) => server.disconnect(volume, reason),
  });
  const admin = await startAdminServer(
    self!.admin,
    {
      status: () => node.statusAll(),
      metrics: createMetrics(() => node.statusAll()),
      discard: (volume, discard) => {
        if (discard !== opts.node) throw new Error(`this is node ${opts.node}: send the resolve to the admin address of node ${discard}`);
        return node.discardLocalChanges(volume);
      },
      verify: (volume, source) => node.startVerify(volume, source),
      volume: (fields) => node.changeVolume(fields),
      stop: () => {
        setImmediate(() => process.kill(process.pid, 'SIGTERM'));
        return `node ${opts.node} is stopping: it tells ${node.peerName} it is leaving, finishes requests in flight and exits`;
      },
    },
    log,
    adminToken,
  );
  const adminPort = (admin.address() as { port: number }).port;
  await node.start();
  const addr = await server.listen(self!.nbd);
  log.info({ address: addr.host, port: addr.port, adminPort, node: opts.node, tls: tls?.mode ?? 'off' }, 'listening');
  printAttachHelp(addr, registry, tls);
  // Reload: a pool size raised in the config grows the pool online.
  process.on('SIGHUP', () => {
    let next;
    try {
      next = loadClusterConfig(opts.config!);
    } catch (err) {
      return log.error({ err: (err as Error).message }, 'reload: the config is not valid; nothing changed');
    }
    node.reload(next, (err, message) => (err ? log.error({ err: err.message }, `reload: ${message}`) : log.info(`reload: ${message}`)));
  });
  stopOnSignals(log, async () => {
    await server.shutdown();
    // Requests in flight are done: tell the peer, so it goes on alone without the witness.
    await node.leave();
    admin.close();
    await node.close();
  });
}

/** SIGINT/SIGTERM: stop gracefully, then exit 0 (1 if stopping failed). */
function stopOnSignals(log: Logger, shutdown: () => Promise<void>): void {
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stop requested');
    shutdown().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

/** Two node processes and a witness on loopback, from a generated cluster config (the quick way to try mirroring and fail-over). */
async function demo(opts: { dir: string }): Promise<void> {
  const dir = resolve(opts.dir);
  mkdirSync(dir, { recursive: true });
  const configPath = join(dir, 'cluster.json');
  // Keys made on the first run and kept after (`npm start` again reuses them); the witness
  // gets the cluster secret as its secrets folder wants it: `<cluster id>.secret`.
  const keys = keygen(dir, 'keep');
  const witnessSecrets = join(dir, 'witness-secrets');
  mkdirSync(witnessSecrets, { recursive: true, mode: 0o700 });
  copyFileSync(keys.clusterSecret, join(witnessSecrets, 'a+b.secret'));
  const config = {
    nodes: {
      a: { nbd: '127.0.0.1:10809', peer: '127.0.0.1:7789', admin: '127.0.0.1:9180', dataDir: 'a' },
      b: { nbd: '127.0.0.1:10810', peer: '127.0.0.1:7790', admin: '127.0.0.1:9181', dataDir: 'b' },
    },
    volumes: { vol0: { size: '1G' } },
    witness: '127.0.0.1:7800',
    security: { adminToken: 'admin.token', clusterSecret: 'cluster.secret' },
  };
  writeFileSync(configPath, `${JSON.stringify(config, null, 2)}\n`);
  const self = fileURLToPath(import.meta.url);
  const run = (args: string[]) => spawn(process.execPath, [self, ...args], { stdio: ['ignore', 'inherit', 'inherit'] });
  const children = [
    run(['witness', '--listen', '127.0.0.1:7800', '--state', join(dir, 'witness.json'), '--secrets', witnessSecrets]),
    ...(['a', 'b'] as const).map((node) => run(['serve', '--config', configPath, '--node', node])),
  ];
  let exited = 0;
  for (const child of children) child.once('exit', () => ++exited === children.length && process.exit(0));
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => children.forEach((c) => c.kill('SIGTERM')));
  // The how-to comes last, once both nodes are up and connected, so start-up logs do not bury it.
  const connected = await untilConnected(['127.0.0.1:9180', '127.0.0.1:9181'].map(parseHostPort), 30_000);
  process.stderr.write(
    [
      '',
      ...(connected ? [] : ['(the nodes did not report Connected within 30 s: see the log above)']),
      `nbd-mirror demo: two nodes mirroring volume "vol0" (1 GiB) and a witness, config ${configPath}`,
      `  node a: nbd://127.0.0.1:10809/vol0   status: npx nbd-mirror status --config ${configPath} --node a`,
      `  node b: nbd://127.0.0.1:10810/vol0   status: npx nbd-mirror status --config ${configPath} --node b`,
      `  keys: ${keys.adminToken} (admin actions), ${keys.clusterSecret} (peer link TLS-PSK, witness requests)`,
      '  witness: 127.0.0.1:7800 (curl http://127.0.0.1:7800/status)',
      '  write on one, read on the other:',
      "    qemu-io -f raw nbd://127.0.0.1:10809/vol0 -c 'write -P 0xab 0 1M'",
      "    qemu-io -f raw nbd://127.0.0.1:10810/vol0 -c 'read -P 0xab 0 1M'",
      `  fail-over: stop b (npx nbd-mirror stop --config ${configPath} --node b, or kill -9 its process);`,
      '    writes on a go on; bring b back and it catches up by itself:',
      `    npx nbd-mirror serve --config ${configPath} --node b`,
      '  a host that rides through a node failure: attach through nbd-mirror attach (paths to both nodes,',
      `    fail-over and back by itself): npx nbd-mirror attach --config ${configPath} --listen 127.0.0.1:10900 --admin 127.0.0.1:9190`,
      "    qemu-io -f raw nbd://127.0.0.1:10900/vol0 -c 'read -P 0xab 0 1M'   paths: npx nbd-mirror status --attach 127.0.0.1:9190",
      '    (or nbd-client per node under dm-multipath, docs/OPERATIONS.md).',
      '  NBD over TLS (off in the demo, so the lines above work as they are): give the nodes "tls" settings',
      "    in the config (docs/CONFIG.md), e.g. PSK keys from psktool -u alice -p keys.psk, then attach with",
      "    nbdinfo 'nbds://alice@127.0.0.1:10809/vol0?tls-psk-file=keys.psk' (docs/SECURITY.md).",
      'Stop with Ctrl-C.',
      '',
    ].join('\n'),
  );
}

/** Polls the nodes' admin endpoints until every volume is Connected (true), or `ms` pass (false). */
async function untilConnected(admins: ListenAddress[], ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 200))) {
    const states = await Promise.all(admins.map((a) => fetchStatus(a).then((s) => Object.values(s.volumes).every((v) => v.connection === 'Connected'), () => false)));
    if (states.every(Boolean)) return true;
  }
  return false;
}

async function resolveSplitBrain(opts: AdminTargetOptions & { volume: string; discard: string }): Promise<void> {
  process.stdout.write(`${await postAction(adminTarget(opts), '/resolve', { volume: opts.volume, discard: opts.discard })}\n`);
}

async function status(opts: AdminTargetOptions & { json?: boolean }): Promise<void> {
  const body = await fetchStatus(adminTarget(opts).addr);
  if (opts.json) return void process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
  const q = body.quorum;
  const lines = [`node ${body.node}  peer link ${body.peer}  quorum ${q.state}${q.witness ? `${q.grantHeld ? ' (holds the witness grant)' : ''}: ${q.reason}` : ' (no witness)'}`];
  const p = body.pool;
  if (p) {
    const crossed = p.thresholdsCrossed.length ? `  over ${p.thresholdsCrossed.at(-1)} %` : '';
    lines.push(`  pool ${formatSize(p.usedBytes)} of ${formatSize(p.sizeBytes)} used (${p.usedPercent.toFixed(1)} %)${crossed}, ${formatSize(p.virtualBytes)} in volumes: over-commit ${p.overcommit.toFixed(2)}x${p.enospcErrors ? `, ${p.enospcErrors} writes refused for space` : ''}`);
  }
  const u = body.unfinishedVolumeChange;
  if (u) lines.push(`  volume change cut short by a link loss: ${u.op} ${u.name}${u.size === undefined ? '' : ` ${formatSize(u.size)}`} — settled by itself when the link is back`);
  for (const [name, v] of Object.entries(body.volumes)) {
    const r = v.resync;
    const eta = r?.etaSeconds != null ? `, ${Math.ceil(r.etaSeconds)} s left` : '';
    const resync = r ? `  resync ${r.role} ${formatSize(r.doneBytes)}/${formatSize(r.totalBytes)} at ${formatSize(r.bytesPerSecond)}/s${eta}` : '';
    const last = v.lastResync ? ` (last resync ${formatSize(v.lastResync.bytes)} in ${v.lastResync.seconds.toFixed(2)} s)` : '';
    lines.push(`  ${name}: ${v.connection} ${v.disk}${v.peerDiskFailed ? " (peer disk Failed)" : ""}  quorum ${v.quorum}  out of sync ${formatSize(v.outOfSyncBytes)}  allocated ${formatSize(v.allocatedBytes)}${resync}  resynced ${formatSize(v.resyncedBytesTotal)}${last}`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

interface AttachCliOptions {
  config: string;
  listen: AttachListen[];
  admin?: ListenAddress;
  startTimeout: number;
  logLevel: (typeof LOG_LEVELS)[number];
}

/** `nbd-mirror attach`: the host-side endpoint with a path to each node (src/attach/). */
async function attach(opts: AttachCliOptions): Promise<void> {
  const log = createLogger(opts.logLevel);
  const config = loadClusterConfig(opts.config);
  const running = await startAttach({ config, configDir: dirname(resolve(opts.config)), listen: opts.listen, admin: opts.admin, startTimeoutMs: opts.startTimeout, log });
  const tcp = running.listening.find((l) => l.kind === 'tcp');
  log.info(
    { address: tcp?.addr.host, port: tcp?.addr.port, listen: running.listening.map(attachAddress), adminPort: running.adminPort, volumes: Object.keys(config.volumes) },
    'listening',
  );
  const lines = [''];
  for (const name of Object.keys(config.volumes).sort()) {
    lines.push(`nbd-mirror attach serves "${name}" with a path to each node. Attach with:`);
    for (const l of running.listening) {
      const uri = l.kind === 'unix' ? `nbd+unix:///${name}?socket=${l.path}` : `nbd://${l.addr.host}:${l.addr.port}/${name}`;
      lines.push(`  qemu-system-x86_64 -drive file=${uri},format=raw,if=virtio ...`, `  nbdinfo '${uri}'`);
      if (l.kind === 'tcp') lines.push(`  sudo nbd-client ${l.addr.host} ${l.addr.port} /dev/nbd0 -N ${name}`);
      else lines.push(`  sudo nbd-client -u ${l.path} /dev/nbd0 -N ${name}`);
    }
    lines.push('');
  }
  if (running.adminPort !== undefined) lines.push(`Paths: nbd-mirror status --attach ${opts.admin!.host}:${running.adminPort}`, '');
  process.stderr.write(lines.join('\n'));
  stopOnSignals(log, () => running.stop());
}

function attachAddress(l: AttachListen): string {
  return l.kind === 'unix' ? `unix:${l.path}` : `${l.addr.host}:${l.addr.port}`;
}

async function attachStatus(addr: ListenAddress, json: boolean): Promise<void> {
  let res;
  try {
    res = await httpRequest(addr, 'GET', '/status', { timeoutMs: 5000 });
  } catch (err) {
    throw new Error(`${(err as Error).message}: is nbd-mirror attach running with --admin ${addr.host}:${addr.port}?`);
  }
  if (res.status !== 200) throw new Error(`attach answered ${res.status}: ${res.body.trim()}`);
  const body = JSON.parse(res.body) as AttachStatus;
  if (json) return void process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
  const lines = [`attach: nodes ${Object.entries(body.nodes).map(([n, s]) => `${n} ${s.reachable ? 'answers' : 'does not answer'}`).join(', ')}`];
  for (const [name, v] of Object.entries(body.volumes)) {
    const paths = Object.entries(v.paths).map(([n, p]) => `${n}${n === v.active ? '*' : ''} ${p.state}${p.size === null ? '' : ` ${formatSize(p.size)}`} (${p.inFlight} in flight)`).join(', ');
    const s = v.lastStall;
    const stall = s ? `  last switch: ${s.kind} ${s.from ?? '-'} -> ${s.to}, paused ${s.pauseMs} ms, ${s.resent} re-sent, ${s.at} (${s.reason})` : '  no fail-over yet';
    lines.push(`  ${name}: ${v.mode} on ${v.active ?? '-'} (preferred ${v.preferred})  size ${formatSize(v.size)}  paths ${paths}  held ${v.held}  re-sent ${v.resentTotal}  fail-overs ${v.failovers}  fail-backs ${v.failbacks}`, `    ${v.reason}`, stall);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** Tells a person how to attach (stderr, so stdout stays JSON logs). */
function printAttachHelp(addr: ListenAddress, registry: ExportRegistry, tls: NbdTls | undefined): void {
  const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
  const lines = [''];
  for (const e of registry.list()) {
    const uri = `nbd://${host}:${addr.port}/${e.name}`;
    lines.push(
      `nbd-mirror is serving "${e.name}" (${formatSize(e.size)}) on ${host}:${addr.port}. Attach with:`,
      `  nbdinfo ${uri}`,
      `  sudo nbd-client ${addr.host} ${addr.port} /dev/nbd0 -N ${e.name}`,
      `  qemu-system-x86_64 -drive file=${uri},format=raw,if=virtio ...`,
      `  qemu-io -f raw ${uri}`,
      ...(tls ? [`  over TLS (${tls.mode}): nbdinfo 'nbds://${host}:${addr.port}/${e.name}?tls-psk-file=FILE' or ?tls-certificates=DIR (README, docs/SECURITY.md)`] : []),
      '',
    );
  }
  lines.push('Stop with Ctrl-C (SIGINT) or SIGTERM: requests in flight finish and data is flushed.', '');
  process.stderr.write(lines.join('\n'));
}

/**
 * The ways a command names a node's admin endpoint (admin-target.ts): `--admin` (with
 * `--token-file`), or `--config` and `--node`, which find the address and the token themselves.
 */
function adminOptions(cmd: Command, admin: Option): Command {
  return cmd
    .addOption(admin.argParser(argParser(parseHostPort)).conflicts('config'))
    .addOption(new Option('--token-file <file>', 'with --admin: the admin token file (security.adminToken of the cluster config)').conflicts('config'))
    .option('--config <file>', 'the cluster config: the admin address and token of --node come from it')
    .option('--node <name>', 'with --config: the node to talk to');
}

export function buildProgram(): Command {
  const program = new Command()
    .name('nbd-mirror')
    .description('Highly available, synchronously mirrored block storage served over NBD')
    .showHelpAfterError();

  program
    .command('serve')
    .description('serve files as NBD exports')
    .option('--listen <host:port>', 'address to listen on (port 0 picks a free one)', argParser(parseHostPort))
    .option('--export <name=path>', 'export a file under a name (repeatable)', argParser(parseExport))
    .option('--config <file>', 'cluster config (JSON): serve this node of a mirrored pair (in progress)')
    .option('--node <name>', 'which node of the cluster config this process is')
    .option('--size <size>', 'create missing export files sparse with this size (e.g. 512M, 1G)', argParser(parseSize))
    .option('--pool <path>', 'serve thin volumes from this pool (a file, created when missing, or a block device; docs/CONFIG.md)')
    .option('--pool-size <size>', 'with --pool: its size (a missing pool is created with it; a larger size grows it)', argParser(parseSize))
    .option('--pool-unit <size>', 'with --pool: allocation unit of a new pool (64K-64M, power of two; default 1M)', argParser(parseSize))
    .addOption(new Option('--pool-on-full <mode>', 'with --pool: a write finding no free unit fails at once (error) or waits up to --pool-hold (queue)').choices(['error', 'queue']))
    .addOption(new Option('--pool-hold <seconds>', 'with --pool-on-full queue: how long a write waits for space').argParser(argParser(parseSeconds)))
    .option('--thin <name=size>', 'with --pool: export a thin volume of this size (repeatable; created when missing)', argParser(parseThin))
    .option('--read-only', 'refuse writes (EPERM)', false)
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
    .addOption(
      new Option('--io <mode>', 'file I/O: auto (small on the event loop, large in the thread pool), sync, async, or mmap (zero-copy reads; see docs/CONFIG.md)')
        .choices(['auto', 'sync', 'async', 'mmap'])
        .default('auto'),
    )
    .addOption(
      new Option('--max-connections <n>', 'NBD connections served at once; more are refused (closed at once, logged)')
        .argParser(argParser(parseCount))
        .default(DEFAULT_LIMITS.maxConnections),
    )
    .addOption(
      new Option('--send-timeout <seconds>', 'drop a client that takes no reply bytes for this long while replies wait')
        .argParser(argParser(parseSeconds))
        .default(DEFAULT_LIMITS.sendTimeoutMs, `${DEFAULT_LIMITS.sendTimeoutMs / 1000}`),
    )
    .addOption(new Option('--tls <mode>', 'NBD over TLS: off, on (STARTTLS offered), require (plain clients refused); default off').choices(['off', 'on', 'require']))
    .option('--tls-certificates <dir>', 'TLS with X.509: a directory with ca-cert.pem, server-cert.pem, server-key.pem (and ca-crl.pem), as nbdkit reads it')
    .option('--tls-verify-peer', 'with --tls-certificates: clients must show a certificate signed by ca-cert.pem')
    .option('--tls-psk <file>', 'TLS with pre-shared keys: the username:hexkey file psktool writes')
    // For tests and chaos drills only (docs/CONFIG.md), so not in --help.
    .addOption(new Option('--test-faults <file>', 'fail or delay chosen requests as FILE says; re-read on SIGUSR2').hideHelp())
    .action(serve);

  program
    .command('demo')
    .description('run a two-node mirrored pair on this machine (127.0.0.1), data under --dir')
    .option('--dir <dir>', 'where the demo keeps its config and volumes', 'data/demo')
    .action(demo);

  adminOptions(
    program.command('resolve').description('resolve a split brain: discard the changes one node made since the split (it resyncs from the other)'),
    new Option('--admin <host:port>', 'the admin address of the node whose changes are discarded'),
  )
    .requiredOption('--volume <name>', 'the diverged volume')
    .requiredOption('--discard <node>', 'the node whose changes are thrown away (must be the node at --admin)')
    .action(resolveSplitBrain);

  adminOptions(
    program.command('verify').description('compare every block of a volume on both nodes (online, rate-limited) and report the ranges that differ'),
    new Option('--admin <host:port>', 'admin address of the node that runs the verify').default({ host: '127.0.0.1', port: 9180 }, '127.0.0.1:9180'),
  )
    .requiredOption('--volume <name>', 'the volume to verify')
    .option('--repair', 'copy the differing ranges from --source afterwards (nothing is repaired without it)')
    .option('--source <node>', 'with --repair: the node whose copy is right')
    .option('--json', 'print the result as JSON (outOfSyncBytes, ranges, …)')
    .action(async (opts: AdminTargetOptions & { volume: string; repair?: boolean; source?: string; json?: boolean }) => {
      process.exitCode = await runVerify({ ...opts, admin: adminTarget(opts) });
    });

  adminOptions(
    program.command('stop').description('stop a node gracefully: it tells its peer it is leaving (the peer goes on writing alone), finishes requests in flight and exits'),
    new Option('--admin <host:port>', "the node's admin address"),
  ).action(async (opts: AdminTargetOptions) => {
    process.stdout.write(`${await postAction(adminTarget(opts), '/stop', {})}\n`);
  });

  program
    .command('keygen')
    .description('write a cluster\'s keys into a folder: admin.token (admin actions) and cluster.secret (witness requests, peer-link TLS-PSK), mode 0600; with --ca also a CA and one certificate per node; with --client a host\'s client certificate')
    .requiredOption('--dir <dir>', 'where to write them (created if missing)')
    .option('--ca', 'also a CA (DIR/ca) and a certificate per node of --config (DIR/certs/NODE: ca-cert.pem, server-cert.pem, server-key.pem) for the peer link and NBD TLS')
    .option('--config <file>', 'the cluster config whose nodes get certificates (with --ca)')
    .option('--client <name>', 'a client certificate for host NAME signed by the CA (DIR/clients/NAME: ca-cert.pem, client-cert.pem, client-key.pem), for nodes with --tls-verify-peer; repeatable. Without --ca: only that, with the CA an earlier keygen --ca made in DIR', (v: string, all: string[] = []) => [...all, v])
    .option('--force', 'replace files that exist (nodes and the witness then need the new ones)')
    .action(async (opts: { dir: string; ca?: boolean; config?: string; client?: string[]; force?: boolean }) => {
      if (opts.ca && opts.config === undefined) throw new InvalidArgumentError('--ca needs --config FILE: the nodes to make certificates for');
      const clients = opts.client ?? [];
      for (const c of clients) {
        const why = clientNameRefusal(c);
        if (why) throw new InvalidArgumentError(why);
      }
      const dir = resolve(opts.dir);
      const existing: ExistingKeys = opts.force ? 'replace' : 'refuse';
      // Loaded only with certificates: it brings a certificate library and a global Reflect polyfill with it.
      const ca = opts.ca || clients.length > 0 ? await import('./security/keygen-ca.js') : undefined;
      const clientLines = (): string[] =>
        clients.map((c) => join(dir, ca!.CLIENTS_DIR, c)).map((d, i) => `wrote ${d}: for host ${clients[i]}, e.g. qemu --object tls-creds-x509,id=tls0,dir=${d},endpoint=client, or nbds://…?tls-certificates=${d}`);
      if (ca && !opts.ca) {
        // Only client certificates: the cluster's keys and CA stay as they are.
        await ca.writeClientCertificates(dir, clients, existing === 'replace');
        process.stdout.write(`${clientLines().join('\n')}\n`);
        return;
      }
      const nodes = ca ? ca.nodeNames(loadClusterConfig(resolve(opts.config!))) : [];
      const keys = keygen(dir, existing, ca ? [...ca.clusterCaFiles(dir, nodes), ...ca.clientFiles(dir, clients)] : []);
      const lines = [`wrote ${keys.adminToken} and ${keys.clusterSecret}. In the cluster config (paths relative to it):`];
      if (ca) {
        const made = await ca.writeClusterCa(dir, nodes, existing === 'replace');
        await ca.writeClientCertificates(dir, clients, existing === 'replace', made);
        lines.push(
          `  "security": { "adminToken": "${keys.adminToken}", "clusterSecret": "${keys.clusterSecret}", "peerCertificates": "${join(dir, ca.CERTS_DIR)}" }`,
          `and, for NBD over TLS, per node: "tls": { "mode": "require", "certificates": "${join(dir, ca.CERTS_DIR)}/NODE" }.`,
          `Copy ${join(dir, ca.CERTS_DIR)}/NODE to node NODE only; ${join(dir, ca.CA_DIR)} holds the CA's key: keep it off the nodes.`,
          `NBD clients check the nodes' certificates with ${join(dir, ca.CA_DIR, 'ca-cert.pem')} (docs/SECURITY.md).`,
          ...clientLines(),
        );
      } else {
        lines.push(`  "security": { "adminToken": "${keys.adminToken}", "clusterSecret": "${keys.clusterSecret}" }`);
      }
      lines.push('and on the witness machine, cluster.secret as <cluster id>.secret in the folder given to nbd-mirror witness --secrets (docs/SECURITY.md).', '');
      process.stdout.write(lines.join('\n'));
    });

  program
    .command('witness')
    .description('run the witness: a small process with no data that lets one node of a pair write alone when the two lose each other')
    .requiredOption('--listen <host:port>', 'address to listen on (the "witness" of the cluster config)', argParser(parseHostPort))
    .option('--state <file>', 'where the witness keeps who holds the write grant (survives restarts)', 'nbd-mirror-witness.json')
    .option('--secrets <dir>', 'folder of <cluster id>.secret files: only signed requests of these clusters are served')
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
    .action(async (opts: { listen: ListenAddress; state: string; secrets?: string; logLevel: (typeof LOG_LEVELS)[number] }) => {
      const log = createLogger(opts.logLevel).child({ component: 'witness' });
      const secrets = opts.secrets === undefined ? undefined : loadWitnessSecrets(resolve(opts.secrets));
      const server = await startWitness(opts.listen, resolve(opts.state), log, { secrets });
      const a = server.address() as { address: string; port: number };
      log.info({ address: a.address, port: a.port, state: resolve(opts.state), clusters: secrets ? [...secrets.keys()] : 'any' }, 'listening');
      for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => server.close(() => process.exit(0)));
    });

  const volume = program.command('volume').description('create, grow or delete a volume online, on both nodes (docs/OPERATIONS.md)');
  const volumeAdmin = () => new Option('--admin <host:port>', 'the admin address of either node (it applies the change on its peer, then on itself)');
  adminOptions(volume.command('create').description('create a volume on both nodes and serve it at once (both nodes must be connected)').argument('<name>', 'volume name (1-64 letters, digits, ".", "_", "-")'), volumeAdmin())
    .requiredOption('--size <size>', 'its size, a multiple of 4K (e.g. 10G)', argParser(parseSize))
    .action(async (name: string, opts: AdminTargetOptions & { size: number }) => {
      process.stdout.write(`${await postAction(adminTarget(opts), '/volume/create', { name, size: String(opts.size) })}\n`);
    });
  adminOptions(volume.command('resize').description('grow a volume on both nodes while it is served (never shrinks); connected clients keep their size, new connections see the new one').argument('<name>', 'volume name'), volumeAdmin())
    .requiredOption('--size <size>', 'its new size, larger than now, a multiple of 4K', argParser(parseSize))
    .action(async (name: string, opts: AdminTargetOptions & { size: number }) => {
      process.stdout.write(`${await postAction(adminTarget(opts), '/volume/resize', { name, size: String(opts.size) })}\n`);
    });
  adminOptions(volume.command('delete').description('delete a volume on both nodes: no longer served, its data and metadata removed').argument('<name>', 'volume name'), volumeAdmin())
    .option('--force', 'drop the NBD clients connected to it instead of refusing')
    .action(async (name: string, opts: AdminTargetOptions & { force?: boolean }) => {
      process.stdout.write(`${await postAction(adminTarget(opts), '/volume/delete', { name, ...(opts.force ? { force: '1' } : {}) })}\n`);
    });

  program
    .command('pool')
    .description('thin pools')
    .command('check')
    .description('check a pool\'s metadata offline (or a running node\'s, read-only: it sees the last committed state); exit 1 on problems')
    .argument('<path>', 'the pool file or block device')
    .option('--json', 'print the report as JSON')
    .action((path: string, opts: { json?: boolean }) => {
      const report = checkPoolFile(resolve(path));
      if (opts.json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      else {
        const u = report.unitSize;
        process.stdout.write(
          [
            `pool ${resolve(path)}: ${formatSize(report.unitCount * u)} in ${report.unitCount} units of ${formatSize(u)} (metadata room for ${formatSize(report.maxUnits * u)})`,
            `  used ${formatSize(report.mappedUnits * u)} (${report.mappedUnits} units), free ${formatSize(report.freeUnits * u)}; journal ${report.journalBlocks} blocks, ${report.journalRecords} changes since the checkpoint`,
            ...report.volumes.map((v) => `  volume ${v.name}: ${formatSize(v.size)}, allocated ${formatSize(v.mappedUnits * u)}`),
            `${report.problems.length} problems`,
            ...report.problems.slice(0, 100).map((p) => `  ${p}`),
            '',
          ].join('\n'),
        );
      }
      if (report.problems.length > 0) process.exitCode = 1;
    });

  adminOptions(program.command('status').description("show a node's volumes (connection, disk state, out-of-sync bytes, resync progress), or with --attach an attach endpoint's paths"), new Option('--admin <host:port>', "the node's admin address"))
    .option('--json', 'print the raw JSON')
    .addOption(new Option('--attach <host:port>', "an nbd-mirror attach's status address (its --admin): each volume's active path, path states, re-sent requests, last stall").argParser(argParser(parseHostPort)).conflicts(['admin', 'config']))
    .action((opts: AdminTargetOptions & { json?: boolean; attach?: ListenAddress }) => (opts.attach ? attachStatus(opts.attach, opts.json === true) : status(opts)));

  program
    .command('attach')
    .description('host-side endpoint: serve every volume of the cluster locally, with a path to each node, fail-over and fail-back (docs/OPERATIONS.md)')
    .requiredOption('--config <file>', 'the cluster config (the same file as on the nodes)')
    .requiredOption(
      '--listen <address>',
      'where local clients attach: HOST:PORT (loopback) or unix:PATH (repeatable)',
      argParser((v: string, prev: AttachListen[] = []) => [...prev, parseAttachListen(v, parseHostPort)]),
    )
    .option('--admin <host:port>', "attach's own status endpoint (GET /status, read by nbd-mirror status --attach)", argParser(parseHostPort))
    .addOption(new Option('--start-timeout <seconds>', 'give up when no node serves a volume within this time').argParser(argParser(parseSeconds)).default(30_000, '30'))
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
    .action(attach);

  return program;
}

buildProgram()
  .parseAsync()
  .catch((err: unknown) => {
    process.stderr.write(`nbd-mirror: ${(err as Error).message}\n`);
    process.exit(2);
  });
