// Key files: one secret per file, 32 random bytes as 64 hex digits and a newline (what
// `openssl rand -hex 32` prints), mode 0600. The admin token and the cluster secret share the
// format, so one reader checks both the same way; the peer link's TLS-PSK reads the cluster
// secret through it too. A key readable by group or others is refused, as ssh refuses such a
// private key: a copy anyone on the machine can read protects nothing.
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';

export const KEY_BYTES = 32;
const KEY_TEXT = /^[0-9a-fA-F]{64}$/;

/** Reads a key file; `what` names it in errors ("security.adminToken"). Throws with the fix. */
export function readKeyFile(path: string, what: string): Buffer {
  let text: string;
  let mode: number;
  try {
    mode = statSync(path).mode;
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${what} ${path}: ${(err as Error).message} (create one with: nbd-mirror keygen --dir DIR)`);
  }
  if ((mode & 0o077) !== 0) throw new Error(`${what} ${path} is readable by others (mode ${(mode & 0o777).toString(8)}): chmod 600 ${path}`);
  const hex = text.trim();
  if (!KEY_TEXT.test(hex)) throw new Error(`${what} ${path} is not ${KEY_BYTES} bytes as ${2 * KEY_BYTES} hex digits (nbd-mirror keygen or openssl rand -hex ${KEY_BYTES} writes one)`);
  return Buffer.from(hex, 'hex');
}

/** Whether `text` has the shape of a key (64 hex digits): presented tokens are checked first. */
export function isKeyText(text: string): boolean {
  return KEY_TEXT.test(text);
}

/**
 * Writes a fresh random key to `path`, mode 0600. Without `replace` an existing file is an error
 * (EEXIST) and is left as it was; with it, the new key goes to a temporary file that is renamed
 * over the old one, so the file is never half-written or briefly readable by others.
 */
export function writeKeyFile(path: string, replace: boolean): void {
  writeNewFile(path, `${randomBytes(KEY_BYTES).toString('hex')}\n`, replace, 0o600);
}

/** Writes `text` to `path` with `mode`, under writeKeyFile's rules (never over a file without `replace`, never half-written). */
export function writeNewFile(path: string, text: string, replace: boolean, mode: number): void {
  const target = replace ? `${path}.tmp` : path;
  if (replace) rmSync(target, { force: true }); // left by an interrupted run
  const fd = openSync(target, 'wx', mode);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  if (replace) renameSync(target, path);
}
