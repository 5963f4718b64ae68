// Prometheus metrics from a node's status: one 0/1 series per state, byte gauges, counters.
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/admin/metrics.js';
import type { NodeStatus, VolumeStatus } from '../../src/replication/cluster-node.js';
import { volumeStatus } from '../support/volume-status.js';

const volume = volumeStatus;

/** The value of one series in exposition text, or undefined. */
function value(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('metrics', () => {
  it('exposes each volume\'s states, bytes and counts as of the scrape', async () => {
    let status: Pick<NodeStatus, 'volumes'> = { volumes: { vol0: volume({}), vol1: volume({}) } };
    const m = createMetrics(() => status);
    expect(m.contentType).toMatch(/text\/plain/);
    let text = await m.scrape();
    expect(value(text, 'nbd_mirror_volume_connection{volume="vol0",state="Connected"}')).toBe(1);
    expect(value(text, 'nbd_mirror_volume_connection{volume="vol0",state="Connecting"}')).toBe(0);
    expect(value(text, 'nbd_mirror_volume_out_of_sync_bytes{volume="vol1"}')).toBe(0);
    expect(value(text, 'nbd_mirror_volume_verify_out_of_sync_bytes{volume="vol0"}')).toBeUndefined();
    expect(text).toMatch(/^process_cpu_seconds_total /m); // the process's own metrics too

    status = {
      volumes: {
        vol0: volume({
          connection: 'Connecting',
          disk: 'Inconsistent',
          quorum: 'denied',
          outOfSyncBytes: 3 * 4096,
          resync: { role: 'target', checksum: false, doneBytes: 1000, totalBytes: 5000, bytesPerSecond: 250, etaSeconds: 16 },
          resyncedBytesTotal: 123456,
          integrityErrors: 2,
          activityLogUpdates: 7,
          verify: { running: false, outOfSyncBytes: 8192 } as VolumeStatus['verify'],
        }),
      },
    };
    text = await m.scrape();
    expect(value(text, 'nbd_mirror_volume_connection{volume="vol0",state="Connected"}')).toBe(0);
    expect(value(text, 'nbd_mirror_volume_connection{volume="vol0",state="Connecting"}')).toBe(1);
    expect(value(text, 'nbd_mirror_volume_disk_state{volume="vol0",state="Inconsistent"}')).toBe(1);
    expect(value(text, 'nbd_mirror_volume_quorum{volume="vol0",state="denied"}')).toBe(1);
    expect(value(text, 'nbd_mirror_volume_out_of_sync_bytes{volume="vol0"}')).toBe(12288);
    expect(value(text, 'nbd_mirror_volume_resync_remaining_bytes{volume="vol0"}')).toBe(4000);
    expect(value(text, 'nbd_mirror_volume_resync_bytes_per_second{volume="vol0"}')).toBe(250);
    expect(value(text, 'nbd_mirror_volume_resynced_bytes_total{volume="vol0"}')).toBe(123456);
    expect(value(text, 'nbd_mirror_volume_integrity_errors_total{volume="vol0"}')).toBe(2);
    expect(value(text, 'nbd_mirror_volume_activity_log_updates_total{volume="vol0"}')).toBe(7);
    expect(value(text, 'nbd_mirror_volume_verify_out_of_sync_bytes{volume="vol0"}')).toBe(8192);
    expect(value(text, 'nbd_mirror_volume_out_of_sync_bytes{volume="vol1"}')).toBeUndefined(); // gone volumes vanish
    expect(text).toMatch(/# TYPE nbd_mirror_volume_resynced_bytes_total counter/);
  });

  it('exposes the thin pool when the node has one, and nothing of it otherwise', async () => {
    const pool: NonNullable<NodeStatus['pool']> = {
      path: '/p',
      sizeBytes: 100,
      usedBytes: 80,
      freeBytes: 20,
      pendingFreeBytes: 0,
      unitBytes: 1,
      maxSizeBytes: 400,
      virtualBytes: 300,
      overcommit: 3,
      usedPercent: 80,
      thresholds: [75, 90],
      thresholdsCrossed: [75],
      onFull: 'error',
      enospcErrors: 4,
      metadata: { commits: 5, journalBlocks: 6, checkpoints: 1, syncs: 11, pendingRecords: 0 },
    };
    let status: Pick<NodeStatus, 'volumes' | 'pool'> = { volumes: { vol0: volume({ allocatedBytes: 80 }) }, pool };
    const m = createMetrics(() => status);
    let text = await m.scrape();
    expect(value(text, 'nbd_mirror_pool_size_bytes{pool="/p"}')).toBe(100);
    expect(value(text, 'nbd_mirror_pool_used_bytes{pool="/p"}')).toBe(80);
    expect(value(text, 'nbd_mirror_pool_virtual_bytes{pool="/p"}')).toBe(300);
    expect(value(text, 'nbd_mirror_pool_used_ratio{pool="/p"}')).toBe(0.8);
    expect(value(text, 'nbd_mirror_pool_thresholds_crossed{pool="/p"}')).toBe(1);
    expect(value(text, 'nbd_mirror_pool_threshold_percent{pool="/p",threshold="90"}')).toBe(90);
    expect(value(text, 'nbd_mirror_pool_enospc_errors_total{pool="/p"}')).toBe(4);
    expect(value(text, 'nbd_mirror_volume_allocated_bytes{volume="vol0"}')).toBe(80);
    status = { volumes: { vol0: volume({}) } };
    text = await m.scrape();
    expect(value(text, 'nbd_mirror_pool_size_bytes{pool="/p"}')).toBeUndefined();
  });
});
