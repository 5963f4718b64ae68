// `nbd-mirror keygen --dir DIR`: two fresh random keys, mode 0600, never overwritten without --force.
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { run } from '../support/fixture.js';
import { cliPath } from '../support/processes.js';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'nbd-mirror-keygen-'));
  dirs.push(d);
  return d;
};
const keygen = (dir: string, ...extra: string[]) => run(process.execPath, [cliPath, 'keygen', '--dir', dir, ...extra]);
const files = ['admin.token', 'cluster.secret'];
const contents = (dir: string) => files.map((f) => readFileSync(join(dir, f), 'utf8'));

describe('nbd-mirror keygen', () => {
  it('writes admin.token and cluster.secret: 32 random bytes as hex, mode 0600, into a folder it creates', async () => {
    const dir = join(tempDir(), 'keys');
    expect(await keygen(dir)).toMatch(/"security": \{ "adminToken": ".*admin\.token", "clusterSecret": ".*cluster\.secret" \}/);
    for (const f of files) expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
    const [token, secret] = contents(dir);
    expect(token).toMatch(/^[0-9a-f]{64}\n$/);
    expect(secret).toMatch(/^[0-9a-f]{64}\n$/);
    expect(token).not.toBe(secret);
    const other = tempDir();
    await keygen(other);
    expect(contents(other)).not.toEqual(contents(dir));
  });

  it('refuses to overwrite (and then writes nothing), replaces with --force', async () => {
    const dir = tempDir();
    await keygen(dir);
    const before = contents(dir);
    await expect(keygen(dir)).rejects.toThrow(/admin\.token and .*cluster\.secret exist: keygen does not overwrite keys .*--force/);
    expect(contents(dir)).toEqual(before);
    // One of the two there already: the missing one is not written either.
    const half = tempDir();
    writeFileSync(join(half, 'cluster.secret'), 'kept\n', { mode: 0o600 });
    await expect(keygen(half)).rejects.toThrow(/cluster\.secret exists/);
    expect(() => statSync(join(half, 'admin.token'))).toThrow(/ENOENT/);
    expect(readFileSync(join(half, 'cluster.secret'), 'utf8')).toBe('kept\n');
    await keygen(dir, '--force');
    const after = contents(dir);
    expect(after[0]).not.toBe(before[0]);
    expect(after[1]).not.toBe(before[1]);
    for (const f of files) expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
  });
});
