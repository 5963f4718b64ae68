// Making a new file's existence durable, not only its bytes: fsync of a file does not promise
// that its directory entry is on disk (POSIX; LazyFS and our power-cut harness drop it), so a
// file created and then only fsynced can vanish in a power cut with everything written to it.
import fs from 'node:fs';
import { dirname } from 'node:path';

/** fsyncs the directory holding `path`, so a file created (or renamed) there survives a power cut. */
export function syncDirectoryOf(path: string): void {
  const fd = fs.openSync(dirname(path), 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Replaces `path` with `text` so that a crash at any instant leaves either the old file or the
 * new one, never a mix: written to `path.tmp`, fsynced, renamed over `path`, directory fsynced.
 */
export function replaceFileDurably(path: string, text: string): void {
  const tmp = `${path}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o644);
  try {
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, path);
  syncDirectoryOf(path);
}

/** Removes `path` (if it is there) and makes its removal durable. */
export function removeFileDurably(path: string): void {
  fs.rmSync(path, { force: true });
  syncDirectoryOf(path);
}
