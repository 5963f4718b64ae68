// The native addon (native/fileops.c, built by `npm install` with node-gyp) for the Linux calls
// Node's fs lacks: hole punching, zero ranges, SEEK_DATA/SEEK_HOLE/SEEK_END, mmap and posix_fadvise.
import { createRequire } from 'node:module';

export interface FileOps {
  punchHole(fd: number, offset: number, length: number): void;
  zeroRange(fd: number, offset: number, length: number): void;
  /** Next data at or after `offset`, or -1 when only a hole follows. */
  seekData(fd: number, offset: number): number;
  seekHole(fd: number, offset: number): number;
  /** The end of the file or device: a block device's size (its fstat says 0). */
  seekEnd(fd: number): number;
  /** posix_fadvise(WILLNEED): prefetch into the page cache in the background; the error number, 0 if none. */
  willNeed(fd: number, offset: number, length: number): number;
  /** A read-only shared mapping of [offset, offset + length); unmapped when collected. */
  mapShared(fd: number, offset: number, length: number): ArrayBuffer;
}

// The same relative path works from src/volume/ (tests) and build/volume/ (compiled). The addon
// builds into native/build/, apart from build/ (tsc, asc): node-gyp rebuild wipes its own folder.
export const fileOps = createRequire(import.meta.url)('../../native/build/Release/fileops.node') as FileOps;
