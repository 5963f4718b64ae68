// Where a node keeps the data of its volumes, by name: the lifecycle steps the volume layer
// offers above the Volume interface (open, grow, destroy), so creating, growing and deleting a
// volume online does not depend on how its bytes are stored. FileStore keeps one sparse file per
// volume (DATADIR/NAME.img); a thin pool implements the same interface (pool/pool-store.ts), with
// `destroy` freeing the volume's allocation units and `grow` only raising its virtual size.
import fs from 'node:fs';
import { join } from 'node:path';
import { removeFileDurably } from '../durable.js';
import { FileVolume } from './file-volume.js';
import type { Volume } from './volume.js';

/** A volume's data as its store hands it out: the Volume interface, and growth while open. */
export interface StoredVolume extends Volume {
  /** Grows to `size` bytes while served (the new range reads as zeroes), durably. */
  grow(size: number): void;
  /** Bytes that hold data on this node (a raw file's allocated blocks, a thin volume's mapped units). */
  allocatedBytes(): number;
}

export interface VolumeStore {
  /** Opens the volume's data, creating it (all zeroes) with `size` when it does not exist. */
  open(name: string, size: number): StoredVolume;
  /**
   * Makes a closed volume's data `size` bytes long (larger: the new range reads as zeroes): a
   * growth a crash cut short, finished at start. An open volume grows itself (FileVolume.grow).
   */
  grow(name: string, size: number): void;
  /** Removes a closed volume's data for good (durably: it does not come back after a crash). */
  destroy(name: string): void;
  /** Is there data for this name (left by a change a crash cut short, for one)? */
  exists(name: string): boolean;
}

export class FileStore implements VolumeStore {
  constructor(readonly dir: string) {}

  private path(name: string): string {
    return join(this.dir, `${name}.img`);
  }

  open(name: string, size: number): FileVolume {
    return FileVolume.open(this.path(name), { createSize: size });
  }

  grow(name: string, size: number): void {
    const path = this.path(name);
    const fd = fs.openSync(path, 'r+');
    try {
      if (fs.fstatSync(fd).size < size) fs.ftruncateSync(fd, size);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  destroy(name: string): void {
    removeFileDurably(this.path(name));
  }

  exists(name: string): boolean {
    return fs.existsSync(this.path(name));
  }
}
