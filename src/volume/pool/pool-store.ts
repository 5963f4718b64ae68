// A node's volumes kept in its thin pool: the VolumeStore seam of volumes online
// (volume-store.ts) over a Pool. Creating a volume gives it a table slot and no units (it reads
// zeros), growing raises its virtual size, destroying frees its units; each is in effect at once
// and durable with the pool's next commit, which is asked for at once (within milliseconds; a
// crash before it brings back the volume as it was, which the node's start-up handles as a
// change a crash cut short).
import type { VolumeStore } from '../volume-store.js';
import type { Pool } from './pool.js';
import type { ThinVolume } from './thin-volume.js';

export class PoolStore implements VolumeStore {
  constructor(readonly pool: Pool) {}

  open(name: string, size: number): ThinVolume {
    return this.pool.volumes.get(name) ?? this.pool.addVolume(name, size);
  }

  grow(name: string, size: number): void {
    const v = this.pool.volume(name);
    if (v.size < size) v.grow(size);
  }

  destroy(name: string): void {
    if (!this.pool.volumes.has(name)) return;
    this.pool.deleteVolume(name, (err) => err && this.pool.log.error({ pool: this.pool.path, volume: name, err: err.message }, 'a deleted volume\'s units could not be freed: the pool takes no more changes'));
  }

  exists(name: string): boolean {
    return this.pool.volumes.has(name);
  }
}
