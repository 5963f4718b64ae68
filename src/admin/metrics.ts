// Prometheus metrics of a node (GET /metrics on the admin endpoint): the same facts the JSON
// status gives, read once per scrape, in the shape alerting rules want (one 0/1 series per
// state, byte gauges, counters since start-up), plus the process's own metrics (CPU, memory,
// event-loop lag) from prom-client's defaults.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { NodeStatus, VolumeStatus } from '../replication/cluster-node.js';
import { DISK_TRANSITIONS, REPLICATION_TRANSITIONS, type DiskStateName, type ReplicationState } from '../replication/replication-state.js';

type VolumesStatus = Pick<NodeStatus, 'volumes' | 'pool'>;

const CONNECTION = ['Connected', 'Connecting', 'StandAlone'] as const;
const REPLICATION = Object.keys(REPLICATION_TRANSITIONS) as ReplicationState[];
const DISK = Object.keys(DISK_TRANSITIONS) as DiskStateName[];
const QUORUM = ['connected', 'alone', 'claiming', 'denied', 'no-quorum'] as const;

export interface NodeMetrics {
  readonly contentType: string;
  /** The exposition text, from a fresh status snapshot. */
  scrape(): Promise<string>;
}

export function createMetrics(status: () => VolumesStatus): NodeMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  let snapshot: VolumesStatus = { volumes: {} };
  const volumes = (): Array<[string, VolumeStatus]> => Object.entries(snapshot.volumes);

  /** One series per state, 1 for the current one: `max by (state)` and alerts on `== 1` work. */
  const states = (name: string, help: string, names: readonly string[], current: (v: VolumeStatus) => string): void => {
    new Gauge({
      name,
      help,
      labelNames: ['volume', 'state'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [volume, v] of volumes()) for (const state of names) this.set({ volume, state }, current(v) === state ? 1 : 0);
      },
    });
  };
  /** One series per volume; `counter`: a count the node keeps since start-up. */
  const perVolume = (name: string, help: string, value: (v: VolumeStatus) => number | null, counter = false): void => {
    const config = { name, help, labelNames: ['volume'] as const, registers: [registry] };
    const each = (put: (volume: string, x: number) => void): void => {
      for (const [volume, v] of volumes()) {
        const x = value(v);
        if (x !== null) put(volume, x);
      }
    };
    if (counter) {
      new Counter({
        ...config,
        collect() {
          this.reset();
          each((volume, x) => this.inc({ volume }, x));
        },
      });
    } else {
      new Gauge({
        ...config,
        collect() {
          this.reset();
          each((volume, x) => this.set({ volume }, x));
        },
      });
    }
  };

  states('nbd_mirror_volume_connection', 'Peer link state of the volume (1 for the current state)', CONNECTION, (v) => v.connection);
  states('nbd_mirror_volume_replication_state', 'Replication state of the volume, DRBD names (1 for the current state)', REPLICATION, (v) => v.replication);
  states('nbd_mirror_volume_disk_state', 'Disk state of the local copy (1 for the current state)', DISK, (v) => v.disk);
  states('nbd_mirror_volume_quorum', 'May this node write without its peer (1 for the current state)', QUORUM, (v) => v.quorum);
  perVolume('nbd_mirror_volume_out_of_sync_bytes', 'Bytes marked out of sync (dirty bits) on this node', (v) => v.outOfSyncBytes);
  perVolume('nbd_mirror_volume_resync_remaining_bytes', 'Bytes the running resync has still to cover (0: no resync)', (v) => (v.resync ? v.resync.totalBytes - v.resync.doneBytes : 0));
  perVolume('nbd_mirror_volume_resync_bytes_per_second', 'Rate of the running resync (0: no resync)', (v) => v.resync?.bytesPerSecond ?? 0);
  perVolume('nbd_mirror_volume_verify_out_of_sync_bytes', 'Bytes the last finished online verify found differing (absent before the first)', (v) => (v.verify && !v.verify.running ? v.verify.outOfSyncBytes : null));
  perVolume('nbd_mirror_volume_resynced_bytes_total', 'Bytes copied by resyncs since start-up', (v) => v.resyncedBytesTotal, true);
  perVolume('nbd_mirror_volume_integrity_errors_total', 'Data frames from the peer that failed their digest check, since start-up', (v) => v.integrityErrors, true);
  perVolume('nbd_mirror_volume_allocated_bytes', 'Bytes of the volume holding data on this node (thin: mapped units)', (v) => v.allocatedBytes);
  /** The node's thin pool: one series each, labelled with its path; absent without a pool. */
  const pool = (name: string, help: string, value: (p: NonNullable<NodeStatus['pool']>) => number, counter = false): void => {
    const config = { name, help, labelNames: ['pool'] as const, registers: [registry] };
    if (counter) {
      new Counter({
        ...config,
        collect() {
          this.reset();
          if (snapshot.pool) this.inc({ pool: snapshot.pool.path }, value(snapshot.pool));
        },
      });
    } else {
      new Gauge({
        ...config,
        collect() {
          this.reset();
          if (snapshot.pool) this.set({ pool: snapshot.pool.path }, value(snapshot.pool));
        },
      });
    }
  };
  pool('nbd_mirror_pool_size_bytes', 'Data capacity of the thin pool', (p) => p.sizeBytes);
  pool('nbd_mirror_pool_used_bytes', 'Bytes of the pool mapped to volumes', (p) => p.usedBytes);
  pool('nbd_mirror_pool_free_bytes', 'Bytes of the pool free for new units', (p) => p.freeBytes);
  pool('nbd_mirror_pool_virtual_bytes', 'Sum of the thin volumes\' sizes (over-commit: more than size)', (p) => p.virtualBytes);
  pool('nbd_mirror_pool_used_ratio', 'Used / size, 0-1 (the thresholds are percentages of this)', (p) => p.usedPercent / 100);
  pool('nbd_mirror_pool_thresholds_crossed', 'Use thresholds crossed now (default 75 %, 90 %)', (p) => p.thresholdsCrossed.length);
  pool('nbd_mirror_pool_enospc_errors_total', 'Writes refused with ENOSPC for want of units since start-up', (p) => p.enospcErrors, true);
  pool('nbd_mirror_pool_metadata_commits_total', 'Metadata commits (each one or two fdatasyncs) since start-up', (p) => p.metadata.commits, true);
  pool('nbd_mirror_pool_metadata_blocks_total', 'Journal blocks written since start-up', (p) => p.metadata.journalBlocks, true);
  new Gauge({
    name: 'nbd_mirror_pool_threshold_percent',
    help: 'The configured use thresholds (one series each), for alert rules',
    labelNames: ['pool', 'threshold'],
    registers: [registry],
    collect() {
      this.reset();
      const p = snapshot.pool;
      for (const t of p?.thresholds ?? []) this.set({ pool: p!.path, threshold: String(t) }, t);
    },
  });
  perVolume('nbd_mirror_volume_activity_log_updates_total', 'Activity-log writes (each with an fdatasync) since start-up', (v) => v.activityLogUpdates, true);

  return {
    contentType: registry.contentType,
    scrape() {
      snapshot = status();
      return registry.metrics();
    },
  };
}
