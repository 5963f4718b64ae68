// A healthy volume's status as a node reports it (GET /status), with fields to change: for tests
// of what reads it (metrics, attach's path decisions).
import type { VolumeStatus } from '../../src/replication/cluster-node.js';

export const volumeStatus = (over: Partial<VolumeStatus> = {}): VolumeStatus => ({
  connection: 'Connected',
  replication: 'Connected',
  peerDiskFailed: false,
  disk: 'UpToDate',
  size: 64 * 2 ** 20,
  outOfSyncBytes: 0,
  allocatedBytes: 0,
  resync: null,
  resyncedBytesTotal: 0,
  integrityErrors: 0,
  activityLogUpdates: 0,
  verify: null,
  quorum: 'connected',
  lastResync: null,
  ...over,
});
