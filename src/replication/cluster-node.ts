// One node of a two-node cluster: opens every volume of the config (data file + metadata),
// links to the peer, mirrors writes, decides on each reconnect what to resync (generation ids),
// and reports state for the admin endpoint. `serve --config FILE --node NAME` runs one.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { ClusterConfig } from '../config/cluster.js';
import { Hotpath } from '../hotpath/index.js';
import type { Logger } from '../log.js';
import { DiskState, newGenerationId, VolumeMeta } from '../meta/volume-meta.js';
import { FileVolume } from '../volume/file-volume.js';
import { Pool, type PoolStatus } from '../volume/pool/pool.js';
import type { Volume } from '../volume/volume.js';
import { canBeSource, decide, finishSync, NO_GENERATION, splitBrainLoser, type NodeGeneration, type SplitBrainPolicy } from './generation.js';
import type { Hello, HelloFields } from './hello.js';
import { MirroredVolume, type PeerPort } from './mirrored-volume.js';
import type { VerifyReport } from './verify.js';
import { PeerLink, type LinkCounters, type LinkState } from './peer-link.js';
import { PeerTls } from './peer-tls.js';
import { MAX_FRAME_BODY, PEER_VERSION, PeerMsg } from './peer-protocol.js';
import { frameName } from './peer-frames.js';
import { ProtocolViolation } from '../protocol/errors.js';
import { diskStateName, PERSISTED_DISK, type DiskStateName, type ReplicationState } from './replication-state.js';
import { QuorumGate, type QuorumDescription, type QuorumState } from './quorum.js';
import { WitnessClient } from '../witness/witness-client.js';
import { readClusterKey } from '../security/cluster-keys.js';

/** Dirty-bitmap grain. */
export const GRAIN = 4096;

export interface VerifyStatus extends VerifyReport {
  running: boolean;
  startedAt: string;
  finishedAt: string | null;
  seconds: number;
  /** Why it stopped early, if it did (the ranges found until then are kept). */
  error: string | null;
  /** With --repair: the node the differing ranges are copied from. */
  repairSource: string | null;
}

/** What `GET /status` answers. */
export interface NodeStatus {
  node: string;
  /** The node's quorum gate: state, why, whether a witness is configured and its grant held here. */
  quorum: QuorumDescription;
  /** The peer link's backpressure: frames in work, times it stopped reading, bytes queued to send. */
  link: LinkCounters;
  /** This node's thin pool, when the cluster has one. */
  pool?: PoolStatus;
  volumes: Record<string, VolumeStatus>;
}

export interface VolumeStatus {
  /** The link's state (StandAlone for a diverged volume). */
  connection: LinkState;
  /** What the pair does with this volume (replication-state.ts). */
  replication: ReplicationState;
  disk: DiskStateName;
  /** The peer said its disk failed: this node holds the only good copy (and tracks every change for it). */
  peerDiskFailed: boolean;
  outOfSyncBytes: number;
  /** Bytes of the volume that hold data on this node: mapped units of a thin volume, allocated blocks of a raw file. */
  allocatedBytes: number;
  resync: { role: 'source' | 'target'; checksum: boolean; doneBytes: number; totalBytes: number; bytesPerSecond: number; etaSeconds: number | null } | null;
  resyncedBytesTotal: number;
  /** Data frames from the peer that failed their digest check (and were sent again), since start. */
  integrityErrors: number;
  /** Activity-log block writes since start-up (each one write + fdatasync): its cost. */
  activityLogUpdates: number;
  /** The running or last verify started on this node since start-up. */
  verify: VerifyStatus | null;
  /** May this node write without its peer (see src/replication/quorum.ts)? */
  quorum: QuorumState;
  /** The last resync that finished since start-up: bytes copied and how long it took. */
  lastResync: { role: 'source' | 'target'; checksum: boolean; bytes: number; wireBytes: number; seconds: number; finishedAt: string } | null;
}

interface NodeVolume {
  readonly name: string;
  /** The local copy: a thin volume in the node's pool, or a raw file. */
  readonly file: Volume;
  readonly allocatedBytes: () => number;
  readonly meta: VolumeMeta;
  readonly mirror: MirroredVolume;
  resyncStarted: number;
  lastResync: VolumeStatus['lastResync'];
  /** The config asks for checksum resync of this volume every time. */
  readonly checksumAlways: boolean;
  verify: VerifyStatus | null;
}

export class ClusterNode {
  readonly volumes: NodeVolume[] = [];
  readonly link: PeerLink;
  readonly hot: Hotpath;
  readonly quorum: QuorumGate;
  private readonly splitBrainPolicy: SplitBrainPolicy;
  /**
   * When the peer sent LEAVING on this link: a disconnect within link.timeout of it is a graceful
   * stop (the peer closes the link right after sending it). Later, the word has lapsed: a link
   * that stayed up after LEAVING and then fails is a failure like any other, and the witness is
   * asked.
   */
  private peerLeavingAt: number | undefined;
  private startAlone: NodeJS.Timeout | undefined;
  private readonly linkTimeoutMs: number;
  private readonly clusterId: string;
  readonly peerName: string;
  /** The node's thin pool (config "pool"); without it each volume is a raw file. */
  readonly pool: Pool | undefined;

  constructor(
    config: ClusterConfig,
    readonly nodeName: string,
    configDir: string,
    slotArenaBytes: number,
    private readonly log: Logger,
    /** Puts a layer between each volume's file and its mirror (the test-only --test-faults). */
    wrapLocal?: (name: string, file: Volume) => Volume,
  ) {
    const names = Object.keys(config.nodes).sort();
    if (!names.includes(nodeName)) throw new Error(`node "${nodeName}" is not in the config (nodes: ${names.join(', ')})`);
    this.peerName = names.find((n) => n !== nodeName)!;
    // The cluster's identity on the peer link, in the volume metadata and at the witness.
    this.clusterId = config.name ?? names.join('+');
    const self = config.nodes[nodeName]!;
    const dataDir = resolve(configDir, self.dataDir);
    mkdirSync(dataDir, { recursive: true });
    // Volume order (and index on the wire) is the sorted names: the same on both nodes.
    const volumeNames = Object.keys(config.volumes).sort();
    const perVolume = MirroredVolume.sizing(GRAIN);
    this.hot = Hotpath.create({
      bitmaps: volumeNames.map((v) => VolumeMeta.bitsFor(config.volumes[v]!.size, GRAIN)),
      digests: perVolume.digests * volumeNames.length,
      digestLists: perVolume.digestLists * volumeNames.length,
      slotArenaBytes,
      stagingBytes: MAX_FRAME_BODY,
    });
    // The cluster secret keys both the peer link's TLS-PSK and the witness requests' signatures.
    const secret = readClusterKey(config, configDir, 'clusterSecret');
    this.link = new PeerLink({
      tls: secret === undefined ? undefined : PeerTls.fromSecret(secret),
      hello: () => this.hello(),
      listen: self.peer,
      peer: config.nodes[this.peerName]!.peer,
      peerName: this.peerName,
      timeoutMs: config.link.timeoutMs,
      heartbeatMs: config.link.heartbeatMs,
      sendStallMs: config.link.ackTimeoutMs,
      log: log.child({ component: 'peer-link' }),
      onConnected: (peer) => {
        // The decision (and a resync marking stale ranges) first: held reads that the gate then
        // lets through must not see a local copy the peer has newer data for.
        this.onConnected(peer);
        this.quorum.peerConnected();
        this.checkInSync();
      },
      onDisconnected: (reason) => {
        const leaving = this.peerLeavingAt !== undefined && Date.now() - this.peerLeavingAt <= this.linkTimeoutMs;
        if (this.peerLeavingAt !== undefined && !leaving) this.log.warn({ reason }, 'the peer said it was leaving but kept the link up; its disconnect is treated as a failure');
        this.peerLeavingAt = undefined;
        // The gate first: writes waiting for the peer are then acknowledged only with quorum.
        this.quorum.peerLost(leaving);
        for (const v of this.volumes) v.mirror.peerLost(`peer gone (${leaving ? 'it left gracefully' : reason}): tracking changes, quorum ${this.quorum.state}`, leaving);
      },
      // Frame bodies land in WASM slots (large ones), so their digests are computed in place.
      allocBody: (n) => this.hot.slots.acquire(n),
      releaseBody: (body) => this.hot.slots.release(body),
      onFrame: (h, body) => {
        // Only frames of the live link, after its HELLO, get here (peer-link.ts). Every body
        // goes back through the link: that ends its frame's cost in the receive budget.
        if (h.type === PeerMsg.LEAVING) {
          this.link.release(body);
          this.peerLeavingAt ??= Date.now();
          return this.log.info('peer says it is leaving (graceful stop): this node will go on alone');
        }
        const index = Number(h.id >> 48n);
        const v = this.volumes[index];
        if (!v) {
          this.link.release(body);
          throw new ProtocolViolation(`${frameName(h.type)} for volume ${index}; there are ${this.volumes.length}`);
        }
        // A diverged volume is not mirrored: frames the peer sent before it decided so are dropped.
        if (v.mirror.replication === 'Diverged') return this.link.release(body);
        v.mirror.handleFrame(h, body);
      },
    });
    if (config.witness && !secret) log.warn('no security.clusterSecret: requests to the witness are unsigned, so anyone who reaches it can take or give back this cluster\'s grant; nbd-mirror keygen writes one');
    this.quorum = new QuorumGate({
      witness: config.witness ? new WitnessClient(config.witness, this.clusterId, nodeName, Math.max(200, config.link.timeoutMs / 2), secret) : undefined,
      onNoQuorum: config.quorum.onNoQuorum,
      suspendMs: config.quorum.suspendTimeout,
      retryMs: 500,
      log: log.child({ component: 'quorum' }),
    });
    this.splitBrainPolicy = config.splitBrain;
    this.linkTimeoutMs = config.link.timeoutMs;
    this.pool = config.pool && Pool.open(resolve(configDir, self.pool?.path ?? join(self.dataDir, 'pool.img')), {
      size: self.pool?.size ?? config.pool.size,
      unitSize: config.pool.unit,
      maxSize: config.pool.maxSize,
      onFull: config.pool.onFull,
      holdMs: config.pool.holdTimeout,
      thresholds: config.pool.thresholds,
      volumes: volumeNames.map((v) => ({ name: v, size: config.volumes[v]!.size })),
      log: log.child({ component: 'pool' }),
      hot: this.hot,
    });
    volumeNames.forEach((name, index) => {
      const size = config.volumes[name]!.size;
      const { file, allocatedBytes } = this.localVolume(dataDir, name, size);
      const meta = VolumeMeta.open(join(dataDir, `${name}.meta`), { cluster: this.clusterId, node: nodeName, volumeSize: size, grain: GRAIN }, this.hot, {
        extentBytes: config.activityLog.extent,
        slots: config.activityLog.extents,
        flushData: (done) => file.flush(done),
      });
      if (meta.recoveredExtents > 0) {
        log.warn({ volume: name, extents: meta.recoveredExtents, outOfSyncBytes: meta.bitmap.count() * GRAIN }, 'volume did not stop cleanly: activity-log extents marked out of sync for a checksum resync');
      }
      const link = this.link;
      // A diverged volume acts as if the peer were gone: it keeps serving and tracking changes.
      const port: PeerPort = {
        get connected() {
          return link.state === 'Connected' && entry.mirror.replication !== 'Diverged';
        },
        send: link.send.bind(link),
        afterSend: link.afterSend.bind(link),
        reset: (reason) => link.reconnect(reason),
        release: (body) => link.release(body),
      };
      const mirror = new MirroredVolume({
        local: wrapLocal?.(name, file) ?? file,
        meta,
        peer: port,
        volumeIndex: index,
        node: nodeName,
        peerName: this.peerName,
        grain: GRAIN,
        hot: this.hot,
        log: log.child({ volume: name }),
        rate: { maxBytesPerSecond: config.resync.maxRate, busyBytesPerSecond: config.resync.busyRate, busyWindowMs: 100 },
        onResyncAsked: (role) => this.resyncNow(entry, role, 'the peer repairs what verify found'),
        quorum: this.quorum,
        ackTimeoutMs: config.link.ackTimeoutMs,
      });
      const entry: NodeVolume = { name, file, allocatedBytes, meta, mirror, resyncStarted: 0, lastResync: null, checksumAlways: config.volumes[name]!.checksumResync, verify: null };
      this.volumes.push(entry);
    });
  }

  /** A volume's local copy: thin in the pool, else a raw file. */
  private localVolume(dataDir: string, name: string, size: number): { file: Volume; allocatedBytes: () => number } {
    if (this.pool) {
      const thin = this.pool.volume(name);
      return { file: thin, allocatedBytes: () => thin.allocatedBytes };
    }
    const file = FileVolume.open(join(dataDir, `${name}.img`), { createSize: size });
    return { file, allocatedBytes: () => file.allocatedBytes() };
  }

  /**
   * Reload (SIGHUP): a larger pool size in the config grows the pool online. Other changes need
   * a restart (volumes online: issue 15 item 7).
   */
  reload(config: ClusterConfig, done: (err: Error | null, message: string) => void): void {
    const size = config.nodes[this.nodeName]?.pool?.size ?? config.pool?.size;
    if (!this.pool || size === undefined) return done(null, 'no pool in the config: nothing to reload');
    const before = this.pool.status().sizeBytes;
    this.pool.grow(size, (err) => done(err, err ? `pool not grown: ${err.message}` : `pool size ${before} -> ${this.pool!.status().sizeBytes} bytes`));
  }

  async start(): Promise<void> {
    await this.link.start();
    // A node that starts and does not find its peer within the link timeout asks the witness
    // whether it may write alone (both nodes rebooted and only this one came back, say).
    this.startAlone = setTimeout(() => {
      if (this.link.state !== 'Connected' && this.quorum.state === 'no-quorum') this.quorum.peerLost(false);
    }, this.linkTimeoutMs);
  }

  private hello(): HelloFields {
    return {
      version: PEER_VERSION,
      cluster: this.clusterId,
      node: this.nodeName,
      volumes: this.volumes.map((v) => ({
        name: v.name,
        size: v.file.size,
        generation: v.meta.generation,
        state: v.mirror.state.disk,
        dirty: v.meta.bitmap.any(),
        checksum: v.meta.checksumResync,
        dirtyBytes: v.meta.bitmap.count() * GRAIN,
        trackingSince: v.meta.trackingSince,
      })),
    };
  }

  private onConnected(peer: Hello): void {
    this.volumes.forEach((v, i) => {
      const theirs = peer.volumes[i]!;
      // A failed disk takes part in no resync (it stores nothing): the pair serves from the other copy.
      if (v.mirror.state.disk === 'Failed') return v.mirror.connected('connected with this disk failed: reads and writes go to the peer');
      if (theirs.state === 'Failed') {
        v.mirror.markPeerDiskFailed('the peer reports its disk failed');
        return v.mirror.connected('connected to a peer whose disk failed: this copy serves both');
      }
      const mine: NodeGeneration = { node: this.nodeName, generation: v.meta.generation, state: v.meta.state, dirty: v.meta.bitmap.any(), crashed: v.meta.checksumResync };
      const other: NodeGeneration = { node: peer.node, generation: theirs.generation, state: PERSISTED_DISK[theirs.state], dirty: theirs.dirty, crashed: theirs.checksum };
      const d = decide(mine, other);
      switch (d.kind) {
        case 'in-sync':
          if (!d.resync) return v.mirror.connected('connected and up to date');
          return this.resync(v, d.source === this.nodeName, theirs, 'bits left by a crash or by verify');
        case 'initial':
          v.mirror.state.setDisk('UpToDate', 'both nodes new: identical by definition', d.source !== this.nodeName ? { generation: { ...v.meta.generation, current: theirs.generation.current } } : {});
          return v.mirror.connected('both nodes new');
        case 'bitmap':
          return this.resync(v, d.source === this.nodeName, theirs, 'changed on one node while apart');
        case 'full':
          if (d.source !== this.nodeName) {
            // Every bit set, durably; then this node takes the source's generation (staying
            // Inconsistent, its old one kept in the history), so a full sync cut short resumes
            // from its bits next time instead of starting over.
            v.meta.markDirty(0, v.meta.bitmap.bits, (err) => {
              const g = v.meta.generation;
              if (!err && v.meta.state === DiskState.Inconsistent) v.meta.saveIdentity({ generation: { current: theirs.generation.current, bitmap: NO_GENERATION, history: [g.current, g.history[0]] } });
            });
          }
          return this.resync(v, d.source === this.nodeName, theirs, 'new or unrelated copy: full sync', false);
        case 'no-consistent-source':
          // Not mirrored until an operator decides: neither copy is overwritten.
          return v.mirror.diverged(
            `not resynced: the copy on ${d.node} would be the source but is incomplete (a sync into it was cut short); nbd-mirror resolve on ${d.node} discards it for a full sync`,
            { decision: d.kind, node: d.node, ours: { state: diskStateName(mine.state), generation: mine.generation }, theirs: { state: theirs.state, generation: other.generation } },
          );
        case 'split-brain':
        case 'unrelated': {
          const ours = { node: this.nodeName, dirtyBytes: v.meta.bitmap.count() * GRAIN, trackingSince: v.meta.trackingSince };
          const peerSide = { node: peer.node, dirtyBytes: theirs.dirtyBytes, trackingSince: theirs.trackingSince };
          const verdict = d.kind === 'split-brain' ? splitBrainLoser(this.splitBrainPolicy, ours, peerSide) : { loser: null, why: 'no common history: an operator chooses' };
          const facts = { decision: d.kind, ours: { ...ours, generation: mine.generation }, theirs: { ...peerSide, generation: other.generation }, policy: this.splitBrainPolicy.policy, loser: verdict.loser, why: verdict.why };
          if (verdict.loser === null) return v.mirror.diverged('data diverged: both nodes keep serving; an operator resolves it', facts);
          v.mirror.diverged(`split brain resolved by policy: node ${verdict.loser} discards its changes`, facts);
          // The loser steps back and reconnects; after this connection's handling, not inside it.
          if (verdict.loser === this.nodeName) setImmediate(() => this.discardLocalChanges(v.name));
          return;
        }
      }
    });
  }

  /**
   * Starts a resync of `v` with the peer. Block digests are compared first (only differing blocks
   * move) when either side crashed (its activity-log extents are mostly identical in fact) or
   * the volume asks for it in the config; never for a full sync.
   */
  private resync(v: NodeVolume, isSource: boolean, theirs: Hello['volumes'][number], reason: string, checksumAllowed = true): void {
    const log = this.log.child({ volume: v.name });
    const role = isSource ? 'source' : 'target';
    // decide() never names an incomplete copy as source; a RESYNC_NOW from the peer may.
    if (isSource && !canBeSource(v.meta.state)) {
      // The peer may have started its target side already: the reconnect ends it, and the
      // next connection decides by generation.
      log.error({ reason, state: diskStateName(v.meta.state) }, 'not resyncing: this copy is incomplete and cannot be a sync source');
      return this.link.reconnect('asked to be the source of a resync with an incomplete copy');
    }
    const checksum = checksumAllowed && (v.checksumAlways || v.meta.checksumResync || theirs.checksum);
    v.resyncStarted = Date.now();
    const before = { bytes: v.mirror.resyncedBytesTotal, wire: v.mirror.resyncWireBytesTotal };
    v.mirror.startResync(
      role,
      (err) => {
        if (err) return log.warn({ err: err.message }, 'resync interrupted; it resumes on the next connection');
        const g = v.meta.generation;
        v.mirror.state.setDisk('UpToDate', `resync finished as ${role}`, { generation: finishSync(g, isSource ? g.current : theirs.generation.current), checksumResync: false, trackingSince: 0 });
        const seconds = (Date.now() - v.resyncStarted) / 1000;
        v.lastResync = { role, checksum, bytes: v.mirror.resyncedBytesTotal - before.bytes, wireBytes: v.mirror.resyncWireBytesTotal - before.wire, seconds, finishedAt: new Date().toISOString() };
        log.info({ role, seconds, bytes: v.lastResync.bytes, wireBytes: v.lastResync.wireBytes }, 'volume up to date after resync');
        this.checkInSync();
      },
      checksum,
      reason,
    );
  }

  /**
   * Split brain, resolved by discarding this node's changes since the split: this node steps back
   * to the generation both had in common (its dirty bits still name what it changed) and the
   * link reconnects, so the peer resyncs the union of both sides' changes onto this node.
   */
  discardLocalChanges(volume: string): string {
    const v = this.volumes.find((x) => x.name === volume);
    if (!v) throw new Error(`no volume "${volume}"`);
    if (v.mirror.replication !== 'Diverged') throw new Error(`volume "${volume}" has not diverged from the peer; nothing to resolve`);
    const g = v.meta.generation;
    if (v.meta.state === DiskState.Inconsistent) {
      // An incomplete copy has no changes worth keeping: it becomes a new node, so the next
      // connection makes it the target of a full sync from the consistent copy.
      v.meta.saveIdentity({ generation: { current: newGenerationId(), bitmap: NO_GENERATION, history: [NO_GENERATION, NO_GENERATION] }, trackingSince: 0 });
      this.log.warn({ volume }, 'incomplete copy discarded: a full sync from the peer follows');
      this.link.reconnect('incomplete copy discarded');
      return `node ${this.nodeName} discards its incomplete copy of ${volume}; a full sync from ${this.peerName} follows`;
    }
    v.mirror.state.setDisk('Outdated', 'split brain resolved: this node discards its changes', { generation: { current: g.bitmap, bitmap: NO_GENERATION, history: g.history }, trackingSince: 0 });
    this.log.warn({ volume, discardedBytes: v.meta.bitmap.count() * GRAIN }, 'split brain resolved: discarding this node\'s changes, resyncing from the peer');
    this.link.reconnect('split brain resolved');
    return `node ${this.nodeName} discards its changes to ${volume}; resync from ${this.peerName} follows`;
  }

  status(v: NodeVolume): VolumeStatus {
    const r = v.mirror.resync;
    const seconds = (Date.now() - v.resyncStarted) / 1000;
    const rate = r && seconds > 0 ? r.doneBytes / seconds : 0;
    return {
      connection: v.mirror.replication === 'Diverged' ? 'StandAlone' : this.link.state,
      replication: v.mirror.replication,
      disk: v.mirror.state.disk,
      peerDiskFailed: v.mirror.peerDiskFailed,
      outOfSyncBytes: v.meta.bitmap.count() * GRAIN,
      allocatedBytes: v.allocatedBytes(),
      resync: r ? { ...r, bytesPerSecond: rate, etaSeconds: rate > 0 ? (r.totalBytes - r.doneBytes) / rate : null } : null,
      resyncedBytesTotal: v.mirror.resyncedBytesTotal,
      integrityErrors: v.mirror.integrityErrors,
      activityLogUpdates: v.meta.activityLog.updates,
      quorum: this.quorum.state,
      lastResync: v.lastResync,
      verify: v.verify && { ...v.verify, ...(v.verify.running ? { ...v.mirror.verifying, seconds: (Date.now() - Date.parse(v.verify.startedAt)) / 1000 } : {}) },
    };
  }

  /**
   * Starts an online verify of `volume` against the peer. Differing ranges are marked out of
   * sync on both nodes; with `repairSource` they are then resynced from that node. Returns at
   * once; progress and the result are in the status (`verify`).
   */
  startVerify(volume: string, repairSource: string | null): string {
    const v = this.volumes.find((x) => x.name === volume);
    if (!v) throw new Error(`no volume "${volume}" (volumes: ${this.volumes.map((x) => x.name).join(', ')})`);
    if (repairSource !== null && repairSource !== this.nodeName && repairSource !== this.peerName) {
      throw new Error(`--source must name a node of this cluster (${this.nodeName} or ${this.peerName}), not "${repairSource}"`);
    }
    if (v.mirror.replication === 'Diverged') throw new Error(`volume "${volume}" has diverged from the peer (split brain): resolve it first`);
    if (v.verify?.running) throw new Error(`a verify of "${volume}" is already running`);
    const started = Date.now();
    const log = this.log.child({ volume });
    const status: VerifyStatus = {
      running: true,
      startedAt: new Date(started).toISOString(),
      finishedAt: null,
      seconds: 0,
      error: null,
      repairSource,
      totalBytes: v.file.size,
      doneBytes: 0,
      outOfSyncBytes: 0,
      ranges: [],
      unverifiedBytes: 0,
      rechecks: 0,
    };
    let refused: Error | null = null;
    v.mirror.verify((err, report) => {
      if (err && !report) return void (refused = err);
      Object.assign(status, report, { running: false, finishedAt: new Date().toISOString(), seconds: (Date.now() - started) / 1000, error: err?.message ?? null });
      const summary = { outOfSyncBytes: status.outOfSyncBytes, ranges: status.ranges.length, unverifiedBytes: status.unverifiedBytes, seconds: status.seconds };
      if (err) return log.warn({ ...summary, err: err.message }, 'verify stopped early');
      if (status.outOfSyncBytes === 0) return log.info(summary, 'verify done: both copies are identical');
      log.warn({ ...summary, firstRanges: status.ranges.slice(0, 10) }, 'verify done: ranges differ between the nodes, marked out of sync');
      if (repairSource === null) return;
      const role = repairSource === this.nodeName ? 'source' : 'target';
      if (v.mirror.askResync(role)) this.resyncNow(v, role, `verify repair from ${repairSource}`);
    });
    if (refused) throw refused;
    v.verify = status;
    log.info({ repairSource }, 'verify started');
    return `verify of ${volume} started on node ${this.nodeName} against ${this.peerName}${repairSource ? `; differences will be repaired from ${repairSource}` : ''}\n`;
  }

  /** A resync now, outside a reconnect (verify repair): both nodes start it, in opposite roles. */
  private resyncNow(v: NodeVolume, role: 'source' | 'target', reason: string): void {
    const theirs = this.link.peer?.volumes[this.volumes.indexOf(v)];
    if (!theirs) return;
    this.resync(v, role === 'source', theirs, reason, false);
  }

  statusAll(): NodeStatus {
    return { node: this.nodeName, quorum: this.quorum.describe(), link: this.link.counters, ...(this.pool ? { pool: this.pool.status() } : {}), volumes: Object.fromEntries(this.volumes.map((v) => [v.name, this.status(v)])) };
  }

  /**
   * Connected and every volume in sync on both sides: a write grant held from the witness is
   * given back (the peer may write alone again next time).
   */
  private checkInSync(): void {
    if (this.link.state !== 'Connected') return;
    if (this.volumes.every((v) => v.mirror.replication === 'Connected' && v.mirror.resync === undefined && v.meta.state === DiskState.UpToDate && !v.meta.bitmap.any())) this.quorum.inSync();
  }

  /**
   * Graceful stop, first step: tell the peer this node is leaving, so it goes on writing alone
   * without asking the witness (DRBD's "last man standing"). Resolves once the frame is sent.
   */
  leave(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.link.send(PeerMsg.LEAVING, 0n)) return resolve();
      this.link.afterSend(() => this.link.drain(resolve));
    });
  }

  async close(): Promise<void> {
    clearTimeout(this.startAlone);
    this.quorum.stop();
    this.link.stop();
    for (const v of this.volumes) {
      v.mirror.stopped();
      // The data durable before the activity log is emptied: after that, nothing would resync it.
      await new Promise<void>((res) => v.file.flush(() => res()));
      await new Promise<void>((res) => v.meta.flushBitmap(() => res()));
      v.meta.close();
      await v.file.close();
    }
    await this.pool?.close();
  }
}
