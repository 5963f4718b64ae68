// One node of a two-node cluster: opens every volume of the config (data file + metadata),
// links to the peer, mirrors writes, decides on each reconnect what to resync (generation ids),
// and reports state for the admin endpoint. `serve --config FILE --node NAME` runs one.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { ClusterConfig } from '../config/cluster.js';
import { formatSize } from '../config/units.js';
import { readVolumesFile, volumesAtStart, writeVolumesFile, type VolumeEntry } from '../config/volumes-file.js';
import { removeFileDurably } from '../durable.js';
import { Hotpath, HotpathError } from '../hotpath/index.js';
import type { Logger } from '../log.js';
import { DiskState, newGenerationId, VolumeMeta, type ActivityLogConfig } from '../meta/volume-meta.js';
import { Pool, type PoolStatus } from '../volume/pool/pool.js';
import { PoolStore } from '../volume/pool/pool-store.js';
import type { Volume } from '../volume/volume.js';
import { FileStore, type StoredVolume, type VolumeStore } from '../volume/volume-store.js';
import { VolumeOps, parseVolumeOp, type VolumeOp } from './volume-ops.js';
import { canBeSource, decide, finishSync, NO_GENERATION, splitBrainLoser, type NodeGeneration, type SplitBrainPolicy } from './generation.js';
import type { Hello, HelloFields } from './hello.js';
import { MirroredVolume, type PeerPort } from './mirrored-volume.js';
import type { VerifyReport } from './verify.js';
import { PeerLink, type LinkCounters, type LinkState } from './peer-link.js';
import { PeerPsk } from './peer-tls.js';
import { PeerX509 } from './peer-x509.js';
import { MAX_FRAME_BODY, PEER_VERSION, PeerMsg } from './peer-protocol.js';
import { frameName } from './peer-frames.js';
import { ProtocolViolation } from '../protocol/errors.js';
import { diskStateName, PERSISTED_DISK, type DiskStateName, type ReplicationState } from './replication-state.js';
import { QuorumGate, type QuorumDescription, type QuorumState } from './quorum.js';
import { WitnessClient } from '../witness/witness-client.js';
import { readClusterKey } from '../security/cluster-keys.js';

/** Dirty-bitmap grain. */
export const GRAIN = 4096;
/** Volume indices one link can number (the top 16 bits of a frame id). */
const MAX_WIRE_INDEX = 2 ** 16;

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
  /** The peer link's state (volume changes need Connected: volume-ops.ts). */
  peer: LinkState;
  /** The peer link's backpressure: frames in work, times it stopped reading, bytes queued to send. */
  link: LinkCounters;
  /** This node's thin pool, when the cluster has one. */
  pool?: PoolStatus;
  /** A volume change asked here that a link loss cut short: settled at the next link-up (volume-ops.ts). */
  unfinishedVolumeChange?: VolumeOp;
  volumes: Record<string, VolumeStatus>;
}

export interface VolumeStatus {
  /** The link's state (StandAlone for a diverged volume). */
  connection: LinkState;
  /** What the pair does with this volume (replication-state.ts). */
  replication: ReplicationState;
  disk: DiskStateName;
  /** The volume's size in bytes on this node (it grows online: attach renews its paths by it). */
  size: number;
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
  /** Its data, from the node's store: a thin volume in the node's pool, or a raw file. */
  readonly file: StoredVolume;
  readonly meta: VolumeMeta;
  readonly mirror: MirroredVolume;
  resyncStarted: number;
  lastResync: VolumeStatus['lastResync'];
  /** The config asks for checksum resync of this volume every time. */
  readonly checksumAlways: boolean;
  verify: VerifyStatus | null;
}

/**
 * What the node needs of the NBD server to add, grow and remove volumes online: the export
 * registry and the connections (src/cli.ts joins them; a node without a server has none).
 */
export interface ServedExports {
  add(name: string, volume: Volume, description: string): void;
  remove(name: string): void;
  /** NBD clients connected to `volume` now. */
  clients(volume: Volume): number;
  /** Drops those clients; resolves once their requests in flight are done (bounded). */
  disconnect(volume: Volume, reason: string): Promise<void>;
}

export class ClusterNode {
  /** The volumes open on this node, in no particular order. */
  readonly volumes: NodeVolume[] = [];
  /**
   * Volumes by their index on the wire (the top 16 bits of a frame id), the same on both nodes:
   * sorted names at each link's HELLO, then volumes created online appended in the order the
   * pair created them; a volume deleted online leaves a hole (its late frames are dropped) until
   * the next link numbers them afresh (renumber).
   */
  private byIndex: Array<NodeVolume | undefined> = [];
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
  private readonly dataDir: string;
  /** Where the volumes' data lives (the volume layer's lifecycle seam: a thin pool implements it too). */
  private readonly store: VolumeStore;
  /** The volume set as the volumes file records it (written after each online change), and the change asked here and not settled yet. */
  private readonly recorded: { volumes: Map<string, VolumeEntry>; deleted: Set<string>; unfinished: VolumeOp | undefined };
  private readonly configVolumes: ReadonlySet<string>;
  private readonly activityLog: ActivityLogConfig;
  /** Volumes changed online (volume-ops.ts). */
  readonly volumeOps: VolumeOps;
  private served: ServedExports | undefined;
  /**
   * What is left of the config's `online` room until the next start: volume bytes that may be
   * created or grown, and volumes that may be created (a deletion gives its share back: its
   * memory is reused).
   */
  private readonly room: { bytes: number; volumes: number };
  /** The node's thin pool (config "pool"); without it each volume is a raw file. */
  readonly pool: Pool | undefined;

  constructor(
    private readonly config: ClusterConfig,
    readonly nodeName: string,
    configDir: string,
    slotArenaBytes: number,
    private readonly log: Logger,
    /** Puts a layer between each volume's file and its mirror (the test-only --test-faults). */
    private readonly wrapLocal?: (name: string, file: Volume) => Volume,
  ) {
    const names = Object.keys(config.nodes).sort();
    if (!names.includes(nodeName)) throw new Error(`node "${nodeName}" is not in the config (nodes: ${names.join(', ')})`);
    this.peerName = names.find((n) => n !== nodeName)!;
    // The cluster's identity on the peer link, in the volume metadata and at the witness.
    this.clusterId = config.name ?? names.join('+');
    const self = config.nodes[nodeName]!;
    this.dataDir = resolve(configDir, self.dataDir);
    mkdirSync(this.dataDir, { recursive: true });
    // The config's volumes and those changed online (the volumes file: it wins where they differ).
    const file = readVolumesFile(this.dataDir);
    const atStart = volumesAtStart(config.volumes, file);
    for (const n of atStart.notes) log.warn(n, 'volume config and volumes file differ');
    this.recorded = { volumes: atStart.volumes, deleted: new Set(file?.deleted ?? []), unfinished: file?.unfinished };
    const u = file?.unfinished;
    if (u) log.warn({ op: u.op, volume: u.name, size: u.size }, 'a volume change asked here was not settled when the node stopped: it is finished or dropped at the first link-up');
    this.configVolumes = new Set(Object.keys(config.volumes));
    this.activityLog = { extentBytes: config.activityLog.extent, slots: config.activityLog.extents };
    // Volume order (and index on the wire) is the sorted names: the same on both nodes.
    const volumeNames = [...atStart.volumes.keys()];
    const perVolume = MirroredVolume.sizing(GRAIN);
    // WASM memory is sized once: the volumes there are, and room for those created or grown
    // online until the next start (config `online`): one bitmap of the whole capacity, and the
    // overhead and digest lists of each volume that may come.
    const onlineSlots = config.online.volumes;
    this.room = { bytes: config.online.capacity, volumes: onlineSlots };
    this.hot = Hotpath.create({
      bitmaps: [...volumeNames.map((v) => VolumeMeta.bitsFor(atStart.volumes.get(v)!.size, GRAIN)), VolumeMeta.bitsFor(config.online.capacity, GRAIN), ...Array<number>(onlineSlots).fill(1)],
      digests: perVolume.digests * (volumeNames.length + onlineSlots),
      digestLists: perVolume.digestLists * (volumeNames.length + onlineSlots),
      slotArenaBytes,
      stagingBytes: MAX_FRAME_BODY,
    });
    const poolConfig = config.pool;
    this.pool =
      poolConfig &&
      Pool.open(resolve(configDir, self.pool?.path ?? join(this.dataDir, 'pool.img')), {
        size: self.pool?.size ?? poolConfig.size,
        unitSize: poolConfig.unit,
        maxSize: poolConfig.maxSize,
        onFull: poolConfig.onFull,
        holdMs: poolConfig.holdTimeout,
        thresholds: poolConfig.thresholds,
        // Created or grown (a growth a stop cut short) in the pool's opening checkpoint.
        volumes: volumeNames.map((v) => ({ name: v, size: atStart.volumes.get(v)!.size })),
        log: log.child({ component: 'pool' }),
        hot: this.hot,
      });
    this.store = this.pool ? new PoolStore(this.pool) : new FileStore(this.dataDir);
    // A deletion a crash cut short before the pool's commit leaves the volume in the pool: it holds
    // its units until a create of the name replaces it (never deleted on a guess: a config edited
    // by mistake must not cost data).
    for (const name of this.pool?.volumes.keys() ?? []) {
      if (!atStart.volumes.has(name)) log.warn({ volume: name }, 'the pool holds a volume that is neither in the config nor in volumes.json: not served; create a volume of that name to replace it (its units are freed then)');
    }
    // The cluster secret keys the witness requests' signatures, and the peer link's TLS-PSK unless
    // the cluster has peer certificates (then mutual x509: a TLS 1.3 handshake takes one or the other).
    const secret = readClusterKey(config, configDir, 'clusterSecret');
    const certificates = config.security.peerCertificates;
    this.link = new PeerLink({
      tls:
        certificates !== undefined
          ? PeerX509.load(resolve(configDir, certificates, nodeName), nodeName, this.peerName)
          : secret === undefined
            ? undefined
            : PeerPsk.fromSecret(secret),
      hello: () => this.hello(),
      listen: self.peer,
      peer: config.nodes[this.peerName]!.peer,
      peerName: this.peerName,
      timeoutMs: config.link.timeoutMs,
      heartbeatMs: config.link.heartbeatMs,
      sendStallMs: config.link.ackTimeoutMs,
      log: log.child({ component: 'peer-link' }),
      settle: (ours, theirs, mismatch) => this.volumeOps.settle(ours, theirs, mismatch),
      holdDial: () => this.volumeOps.inProgress,
      onConnected: (peer) => {
        this.volumeOps.linkUp();
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
        for (const v of this.volumes) v.mirror.peerLost(`peer gone (${leaving ? 'it left gracefully' : reason}): tracking changes, quorum ${this.quorum.state}`);
        this.volumeOps.linkLost();
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
        if (h.type === PeerMsg.VOLUME_OP || h.type === PeerMsg.VOLUME_OP_ACK) {
          try {
            return this.volumeOps.onFrame(h.type, h.id, body);
          } finally {
            this.link.release(body);
          }
        }
        const index = Number(h.id >> 48n);
        const v = this.byIndex[index];
        if (!v) {
          this.link.release(body);
          // A volume deleted (or being resized) online on this link: the peer's late frames for it.
          if (index < this.byIndex.length) return;
          throw new ProtocolViolation(`${frameName(h.type)} for volume ${index}; there are ${this.byIndex.length}`);
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
      // A node that holds no data at all (a replaced disk): the witness refuses it alone once the cluster holds data.
      brandNew: () => this.volumes.every((v) => v.mirror.brandNew),
    });
    this.splitBrainPolicy = config.splitBrain;
    this.linkTimeoutMs = config.link.timeoutMs;
    const link = this.link;
    const recorded = this.recorded;
    this.volumeOps = new VolumeOps({
      node: nodeName,
      peerName: this.peerName,
      get connected() {
        return link.state === 'Connected';
      },
      send: (type, id, body) => link.send(type, id, body),
      refusal: (op) => this.opRefusal(op),
      finishRefusal: (op) => this.finishRefusal(op),
      apply: (op) => this.applyOp(op),
      get unfinished() {
        return recorded.unfinished;
      },
      recordUnfinished: (op) => this.writeRecorded(op),
      log: log.child({ component: 'volume-ops' }),
      timeoutMs: config.link.ackTimeoutMs,
    });
    for (const name of volumeNames) {
      const entry = atStart.volumes.get(name)!;
      this.finishInterruptedResize(name, entry.size);
      this.addVolume(this.openVolume(name, entry, this.byIndex.length));
    }
  }

  /** Opens a volume's data and metadata and mirrors it, at wire index `index` (not yet listed: addVolume). */
  private openVolume(name: string, spec: VolumeEntry, index: number, created?: Parameters<typeof VolumeMeta.open>[4]): NodeVolume {
    const log = this.log;
    const file = this.store.open(name, spec.size);
    if (file.size !== spec.size) {
      void file.close();
      throw new Error(`the data of volume ${name} in ${this.dataDir} is ${file.size} bytes, the volume ${spec.size}: it belongs to something else (move it away) or was resized by hand`);
    }
    let meta: VolumeMeta;
    try {
      // Before an extent leaves the log its writes are made durable on both copies (here and on
      // the peer). The peer's copy of a write is named by no log of its own; were both nodes to
      // lose power, the block would not be resynced (power-cut chaos, both cut).
      meta = VolumeMeta.open(this.metaPath(name), this.metaIdentity(spec.size), this.hot, { ...this.activityLog, flushData: (done) => entry.mirror.flushForLog(done) }, created);
    } catch (err) {
      void file.close();
      throw err;
    }
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
    const config = this.config;
    const mirror = this.unlessThrows(() => new MirroredVolume({
      local: this.wrapLocal?.(name, file) ?? file,
      meta,
      peer: port,
      volumeIndex: index,
      node: this.nodeName,
      peerName: this.peerName,
      grain: GRAIN,
      hot: this.hot,
      log: log.child({ volume: name }),
      rate: { maxBytesPerSecond: config.resync.maxRate, busyBytesPerSecond: config.resync.busyRate, busyWindowMs: 100 },
      onResyncAsked: (role) => this.resyncNow(entry, role, 'the peer repairs what verify found'),
      quorum: this.quorum,
      ackTimeoutMs: config.link.ackTimeoutMs,
    }), () => {
      meta.close();
      meta.bitmap.release();
      void file.close();
    });
    const entry: NodeVolume = { name, file, meta, mirror, resyncStarted: 0, lastResync: null, checksumAlways: spec.checksumResync, verify: null };
    return entry;
  }

  /** `make()`, or, if it throws, `undo()` then the throw (what a half-opened volume holds is given back). */
  private unlessThrows<T>(make: () => T, undo: () => void): T {
    try {
      return make();
    } catch (err) {
      undo();
      throw err;
    }
  }

  private addVolume(v: NodeVolume): void {
    this.volumes.push(v);
    this.byIndex[v.mirror.volumeIndex] = v;
  }

  private metaPath(name: string): string {
    return join(this.dataDir, `${name}.meta`);
  }

  private metaIdentity(volumeSize: number) {
    return { cluster: this.clusterId, node: this.nodeName, volumeSize, grain: GRAIN };
  }

  /**
   * Reload (SIGHUP): a larger pool size in the config grows the pool online. Volumes change
   * online through `nbd-mirror volume` (volume-ops.ts); other config changes need a restart.
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

  /** The volumes in name order: a HELLO lists them so, and a new link numbers them so. */
  private sortedVolumes(): NodeVolume[] {
    return [...this.volumes].sort((x, y) => (x.name < y.name ? -1 : 1));
  }

  private hello(): HelloFields {
    return {
      version: PEER_VERSION,
      cluster: this.clusterId,
      node: this.nodeName,
      volumes: this.sortedVolumes().map((v) => ({
        name: v.name,
        size: v.file.size,
        generation: v.meta.generation,
        state: v.mirror.state.disk,
        dirty: v.meta.bitmap.any(),
        checksum: v.meta.checksumResync,
        dirtyBytes: v.meta.bitmap.count() * GRAIN,
        trackingSince: v.meta.trackingSince,
      })),
      ...(this.recorded.unfinished && { unfinished: this.recorded.unfinished }),
    };
  }

  private onConnected(peer: Hello): void {
    // Both HELLOs listed the same names in the same order (helloMismatch): that is the numbering
    // on this link. Nothing of an earlier link is in flight any more.
    this.byIndex = this.sortedVolumes();
    this.byIndex.forEach((v, i) => v!.mirror.renumber(i));
    this.byIndex.forEach((v, i) => {
      if (!v) return;
      const theirs = peer.volumes[i]!;
      // A failed disk takes part in no resync (it stores nothing): the pair serves from the other copy.
      if (v.mirror.state.disk === 'Failed') return v.mirror.connected('connected with this disk failed: reads and writes go to the peer');
      if (theirs.state === 'Failed') {
        // Would this copy be the source if the peer's disk were good? If not, the peer wrote
        // without it before its disk failed (this copy is behind): it may not serve alone either.
        const asIf = decide(
          { node: this.nodeName, generation: v.meta.generation, state: v.meta.state, dirty: false, crashed: false },
          { node: peer.node, generation: theirs.generation, state: DiskState.UpToDate, dirty: false, crashed: false },
        );
        const behind = !(asIf.kind === 'initial' || asIf.kind === 'in-sync' || ((asIf.kind === 'bitmap' || asIf.kind === 'full') && asIf.source === this.nodeName));
        v.mirror.markPeerDiskFailed('the peer reports its disk failed', behind);
        if (!v.mirror.complete) return v.mirror.connected('connected to a peer whose disk failed, and this copy is incomplete: only the ranges it holds are served, no writes, until the peer returns with a working disk');
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
      size: v.file.size,
      peerDiskFailed: v.mirror.peerDiskFailed,
      outOfSyncBytes: v.meta.bitmap.count() * GRAIN,
      allocatedBytes: v.file.allocatedBytes(),
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
      holeBytes: 0,
      skippedHoleBytes: 0,
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
    if (this.link.state !== 'Connected') return;
    // A volume created online on this link is in no HELLO: its generation is the one both
    // nodes were given, and a connected, verified pair shares its current one anyway.
    const theirs = this.link.peer?.volumes.find((x) => x.name === v.name) ?? { ...this.hello().volumes.find((x) => x.name === v.name)!, checksum: false };
    this.resync(v, role === 'source', theirs, reason, false);
  }

  statusAll(): NodeStatus {
    return { node: this.nodeName, quorum: this.quorum.describe(), peer: this.link.state, link: this.link.counters, ...(this.pool ? { pool: this.pool.status() } : {}), ...(this.recorded.unfinished && { unfinishedVolumeChange: this.recorded.unfinished }), volumes: Object.fromEntries(this.volumes.map((v) => [v.name, this.status(v)])) };
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
  async leave(): Promise<void> {
    // Only a node that holds no witness grant may let its peer go on without asking (quorum.ts giveBack).
    if (!(await this.quorum.giveBack())) {
      return this.log.warn('stopping without telling the peer it is leaving: the witness grant held here could not be given back, so the peer asks the witness as after a failure');
    }
    return new Promise((resolve) => {
      if (!this.link.send(PeerMsg.LEAVING, 0n)) return resolve();
      this.link.afterSend(() => this.link.drain(resolve));
    });
  }

  async close(): Promise<void> {
    clearTimeout(this.startAlone);
    this.quorum.stop();
    this.link.stop();
    for (const v of this.volumes) await this.closeVolume(v);
    await this.pool?.close();
  }

  /** Stops mirroring a volume and closes it cleanly (its activity log emptied). */
  private async closeVolume(v: NodeVolume, reason?: string): Promise<void> {
    v.mirror.stopped(reason);
    // The data durable before the activity log is emptied: after that, nothing would resync it.
    // A flush that fails (a failed disk) leaves the log and the running flag as a crash would.
    const flushed = (flush: (cb: (err: Error | null) => void) => void) => new Promise<Error | null>((res) => flush(res));
    const err = (await flushed((cb) => v.file.flush(cb))) ?? (await flushed((cb) => v.meta.flushBitmap(cb)));
    if (err) {
      this.log.warn({ volume: v.name, err: err.message }, 'stopping with a data or bitmap flush that failed: the activity log is kept, so the next start resyncs what it names');
      v.meta.closeUnclean();
    } else {
      v.meta.close();
    }
    await v.file.close();
  }

  /**
   * A new volume: data and metadata created (UpToDate with the generation both nodes were given:
   * both copies are zeroes), recorded in the volumes file, mirrored and served at once.
   */
  private createVolume(op: VolumeOp): void {
    const spec: VolumeEntry = { size: op.size!, checksumResync: false };
    // Files under this name belong to no volume: left by a create or delete a crash cut short.
    this.removeVolumeFiles(op.name);
    const v = this.openVolume(op.name, spec, this.byIndex.length, { state: DiskState.UpToDate, generation: { current: op.generation!, bitmap: NO_GENERATION, history: [NO_GENERATION, NO_GENERATION] } });
    try {
      this.recorded.volumes.set(op.name, spec);
      this.recorded.deleted.delete(op.name);
      this.commitRecorded();
    } catch (err) {
      this.recorded.volumes.delete(op.name);
      void this.closeVolume(v, 'its creation could not be recorded').then(() => {
        v.meta.bitmap.release();
        v.mirror.release();
        this.removeVolumeFiles(op.name);
      });
      throw err;
    }
    this.addVolume(v);
    this.room.bytes -= op.size!;
    this.room.volumes--;
    if (this.link.state === 'Connected') v.mirror.connected('created online on both nodes');
    this.served?.add(v.name, v.mirror, this.exportDescription(v));
    this.log.info({ volume: op.name, size: op.size, index: v.mirror.volumeIndex }, 'volume created online');
  }

  /**
   * A volume grows while served: the new size recorded first (from then on a restart finishes
   * the growth: finishInterruptedResize), then the volume grows in place (MirroredVolume.grow:
   * changes held for a moment, data and metadata grown), then offered at the new size. Its
   * connected clients keep going with the size they negotiated.
   */
  private async resizeVolume(op: VolumeOp): Promise<void> {
    const v = this.volumes.find((x) => x.name === op.name)!;
    const oldSize = v.file.size;
    this.recorded.volumes.set(op.name, { size: op.size!, checksumResync: v.checksumAlways });
    this.commitRecorded();
    await new Promise<void>((resolve, reject) => v.mirror.grow(op.size!, () => v.file.grow(op.size!), (err) => (err ? reject(err) : resolve())));
    this.room.bytes -= op.size! - oldSize;
    this.served?.remove(v.name);
    this.served?.add(v.name, v.mirror, this.exportDescription(v));
    this.log.info({ volume: op.name, from: oldSize, to: op.size, clients: this.served?.clients(v.mirror) ?? 0 }, 'volume resized online');
  }

  /** A volume goes: clients (with --force) dropped, closed, its deletion recorded, its data and metadata removed. */
  private async deleteVolume(op: VolumeOp): Promise<void> {
    const v = this.volumes.find((x) => x.name === op.name)!;
    await this.takeOffline(v, op, 'volume deleted online');
    this.recorded.volumes.delete(op.name);
    if (this.configVolumes.has(op.name)) this.recorded.deleted.add(op.name);
    this.commitRecorded();
    this.removeVolumeFiles(op.name);
    this.room.bytes += v.file.size;
    this.room.volumes++;
    this.log.info({ volume: op.name, size: v.file.size }, 'volume deleted online: data and metadata removed');
  }

  /** A volume being deleted: no longer served, its clients dropped, unlisted (its wire index a hole), closed, its memory given back. */
  private async takeOffline(v: NodeVolume, op: VolumeOp, reason: string): Promise<void> {
    this.served?.remove(v.name);
    // With --force, its clients; without, any that connected since the check (none new can now).
    if (this.served && this.served.clients(v.mirror) > 0) await this.served.disconnect(v.mirror, op.force ? `${reason} (--force)` : reason);
    this.forget(v);
    await this.closeVolume(v, reason);
    v.meta.bitmap.release();
    v.mirror.release();
  }

  private forget(v: NodeVolume): void {
    this.volumes.splice(this.volumes.indexOf(v), 1);
    if (this.byIndex[v.mirror.volumeIndex] === v) this.byIndex[v.mirror.volumeIndex] = undefined;
  }

  /** Removes a volume's data (the store's destroy: a pool frees its units) and its metadata, durably. */
  private removeVolumeFiles(name: string): void {
    this.store.destroy(name);
    removeFileDurably(this.metaPath(name));
  }

  /**
   * Writes the volumes file after a change applied here: the set as it is now, and no unfinished
   * change (the one applied was it, or there was none: a node with one applies no other).
   * volumes-file.ts explains how it combines with the config.
   */
  private commitRecorded(): void {
    this.writeRecorded(undefined);
  }

  /** Writes the volumes file with `unfinished` as the change asked here and not settled; in memory once written. */
  private writeRecorded(unfinished: VolumeOp | undefined): void {
    writeVolumesFile(this.dataDir, { version: 1, volumes: Object.fromEntries(this.recorded.volumes), deleted: [...this.recorded.deleted], unfinished });
    this.recorded.unfinished = unfinished;
  }

  /**
   * At start: a volume whose recorded size is larger than its metadata's was being grown when
   * the node stopped (the size is recorded first): the growth is finished before it opens. A
   * metadata file left open by a crash is opened at its old size first, which turns its activity
   * log into dirty bits and closes it cleanly.
   */
  private finishInterruptedResize(name: string, size: number): void {
    const recorded = VolumeMeta.recordedSize(this.metaPath(name));
    if (recorded === undefined || recorded >= size) return;
    this.log.warn({ volume: name, from: recorded, to: size }, 'finishing a resize that a stop cut short');
    const meta = VolumeMeta.open(this.metaPath(name), this.metaIdentity(recorded), this.hot, this.activityLog);
    meta.close();
    meta.bitmap.release();
    this.store.grow(name, size);
    VolumeMeta.grow(this.metaPath(name), this.metaIdentity(size), size);
  }

  /** Where the node's volumes are served over NBD (set once the server exists; volumes added online are served at once). */
  serveOn(served: ServedExports): void {
    this.served = served;
    for (const v of this.sortedVolumes()) served.add(v.name, v.mirror, this.exportDescription(v));
  }

  private exportDescription(v: NodeVolume): string {
    return `nbd-mirror volume ${v.name} (${formatSize(v.file.size)}), node ${this.nodeName}`;
  }

  /** `nbd-mirror volume create|resize|delete` (the admin endpoint): on both nodes, or refused. */
  changeVolume(fields: Record<string, unknown>): Promise<string> {
    let op: VolumeOp;
    try {
      op = parseVolumeOp(fields.op === 'create' ? { ...fields, generation: newGenerationId() } : fields);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    return this.volumeOps.request(op);
  }

  /** Why this node cannot apply `op` now, or undefined (the same check on both nodes). */
  private opRefusal(op: VolumeOp): string | undefined {
    const v = this.volumes.find((x) => x.name === op.name);
    if (op.op === 'create') {
      if (v) return `volume ${op.name} exists on ${this.nodeName}`;
      // Wire indices are 16 bits, and a link never reuses one (a deleted volume's late frames).
      if (this.byIndex.length >= MAX_WIRE_INDEX) return `${this.byIndex.length} volumes were created or numbered on this link: it must reconnect (nbd-mirror stop and start one node) before more`;
      return this.roomFor(op.size!, op.size!, true);
    }
    if (!v) return `no volume ${op.name} on ${this.nodeName} (volumes: ${this.volumes.map((x) => x.name).sort().join(', ') || 'none'})`;
    if (v.mirror.resync) return `volume ${op.name} is resyncing on ${this.nodeName}: wait until it is done`;
    if (v.verify?.running) return `a verify of ${op.name} is running on ${this.nodeName}: wait until it is done`;
    if (op.op === 'delete') {
      const clients = this.served?.clients(v.mirror) ?? 0;
      if (clients === 0 || op.force) return undefined;
      return `${clients} NBD client${clients === 1 ? ' is' : 's are'} connected to ${op.name} on ${this.nodeName}: disconnect ${clients === 1 ? 'it' : 'them'} first, or give --force to drop ${clients === 1 ? 'it' : 'them'}`;
    }
    if (op.size! < v.file.size) return `volumes only grow: ${op.name} is ${v.file.size} bytes, ${op.size} asked (shrinking would cut off data)`;
    if (op.size === v.file.size) return `volume ${op.name} is already ${op.size} bytes`;
    if (v.mirror.replication !== 'Connected' || v.mirror.state.disk !== 'UpToDate') {
      return `volume ${op.name} is ${v.mirror.replication} ${v.mirror.state.disk} on ${this.nodeName}: it grows only while Connected and UpToDate on both nodes`;
    }
    return this.roomFor(op.size!, op.size! - v.file.size, false);
  }

  /**
   * Why this node cannot finish, unlinked, a change its peer applied (volume-ops.ts settle): the
   * HELLOs showed the name free (create) or there (resize, delete); what is left is room.
   */
  private finishRefusal(op: VolumeOp): string | undefined {
    if (op.op === 'create') return this.opRefusal(op);
    if (op.op === 'delete') return undefined;
    const v = this.volumes.find((x) => x.name === op.name)!;
    if (op.size! <= v.file.size) return `volumes only grow: ${op.name} is ${v.file.size} bytes here, ${op.size} on the peer`;
    return this.roomFor(op.size!, op.size! - v.file.size, false);
  }

  /**
   * Is there room for a `size`-byte volume, `added` bytes more than now: in what the config keeps
   * for online changes, and in hot-path memory for its dirty bitmap (and, new, its digest lists)
   * — tried for real and given back, so the answer holds for the change that follows.
   */
  private roomFor(size: number, added: number, newVolume: boolean): string | undefined {
    const { capacity, volumes } = this.config.online;
    const left = `the config's "online" section keeps ${capacity} bytes and ${volumes} volumes for online changes until the node restarts; left: ${this.room.bytes} bytes, ${this.room.volumes} volumes`;
    if (added > this.room.bytes || (newVolume && this.room.volumes < 1)) return `no room left on ${this.nodeName} for ${added} more bytes${newVolume ? ' in a new volume' : ''}: ${left}`;
    const held: Array<{ release(): void }> = [];
    try {
      held.push(this.hot.bitmap(VolumeMeta.bitsFor(size, GRAIN)));
      if (newVolume) for (let i = 0; i < MirroredVolume.sizing(GRAIN).digestLists; i++) held.push(this.hot.digestList(MirroredVolume.sizing(GRAIN).digests / 2));
      return undefined;
    } catch (err) {
      if (!(err instanceof HotpathError)) throw err;
      return `no room left on ${this.nodeName} in hot-path memory for the bitmap of a volume of ${size} bytes (${left}; a restart makes room afresh)`;
    } finally {
      for (const h of held) h.release();
    }
  }

  /** Applies a checked change on this node (volume-ops.ts calls it on both). */
  private applyOp(op: VolumeOp): Promise<void> {
    if (op.op === 'create') {
      // At once, not in a later turn: the peer's frames for the new volume may follow its answer.
      try {
        this.createVolume(op);
        return Promise.resolve();
      } catch (err) {
        return Promise.reject(err as Error);
      }
    }
    if (op.op === 'resize') return this.resizeVolume(op);
    return this.deleteVolume(op);
  }

}
