// The power-loss harness on its own (test/support/powercut/): what was synced survives a cut,
// what was not is gone — data, sizes and new directory entries — and a torn cut is replayable.
import { closeSync, existsSync, fdatasyncSync, fsyncSync, mkdtempSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { mountPowerCut, type PowerCutMount } from '../support/powercut.js';
import { missingTools } from '../support/tools.js';

const root = mkdtempSync(join(tmpdir(), 'nbd-mirror-powercut-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

/** A fresh backing dir and mount; `fn` works in it; returns the backing dir after the cut. */
async function scenario(fn: (dir: string) => void, how: Parameters<PowerCutMount['cut']>[0] = 'all'): Promise<{ backing: string; reverted: Awaited<ReturnType<PowerCutMount['cut']>> }> {
  const backing = join(root, `b${++n}`);
  const m = await mountPowerCut(backing, join(root, `m${n}`));
  try {
    fn(m.mountpoint);
  } catch (e) {
    await m.stop();
    throw e;
  }
  return { backing, reverted: await m.cut(how) };
}

const syncDir = (dir: string): void => {
  const fd = openSync(dir, 'r');
  fsyncSync(fd);
  closeSync(fd);
};

describe.skipIf(missingTools('fusermount3').length > 0)('power-cut filesystem', () => {
  it('keeps what fsync or fdatasync made durable and drops what came after', async () => {
    const { backing, reverted } = await scenario((dir) => {
      const fd = openSync(join(dir, 'f'), 'w+');
      writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 0);
      fsyncSync(fd);
      syncDir(dir);
      writeSync(fd, Buffer.alloc(1024, 2), 0, 1024, 0); // unsynced overwrite
      writeSync(fd, Buffer.alloc(4096, 3), 0, 4096, 4096); // unsynced extension
      const g = openSync(join(dir, 'g'), 'w+');
      writeSync(g, Buffer.alloc(512, 4), 0, 512, 0);
      fdatasyncSync(g);
      syncDir(dir);
      closeSync(g);
      closeSync(fd);
    });
    expect(readFileSync(join(backing, 'f')).equals(Buffer.alloc(4096, 1))).toBe(true);
    expect(readFileSync(join(backing, 'g')).equals(Buffer.alloc(512, 4))).toBe(true);
    expect(reverted.sectors).toBeGreaterThanOrEqual(2);
  });

  it('drops a new file whose directory was never synced, and an unsynced truncate', async () => {
    const { backing } = await scenario((dir) => {
      const fd = openSync(join(dir, 'kept'), 'w+');
      writeSync(fd, Buffer.alloc(8192, 5), 0, 8192, 0);
      fsyncSync(fd);
      syncDir(dir);
      ftruncateSync(fd, 1000); // not synced
      closeSync(fd);
      const lost = openSync(join(dir, 'lost'), 'w+');
      writeSync(lost, Buffer.alloc(100, 6), 0, 100, 0);
      fsyncSync(lost); // the file's data, but not its directory entry
      closeSync(lost);
    });
    expect(statSync(join(backing, 'kept')).size).toBe(8192);
    expect(readFileSync(join(backing, 'kept')).equals(Buffer.alloc(8192, 5))).toBe(true);
    expect(existsSync(join(backing, 'lost'))).toBe(false);
  });

  it('an unsynced rename over a file is undone with the replaced file back, as the witness and superblock replace files', async () => {
    const { backing } = await scenario((dir) => {
      writeFileSync(join(dir, 'state'), 'old');
      const fd = openSync(join(dir, 'state'), 'r+');
      fsyncSync(fd);
      closeSync(fd);
      syncDir(dir);
      const tmp = openSync(join(dir, 'state.tmp'), 'w');
      writeSync(tmp, 'new');
      fsyncSync(tmp);
      closeSync(tmp);
      renameSync(join(dir, 'state.tmp'), join(dir, 'state')); // the directory never synced after it
    });
    expect(readFileSync(join(backing, 'state'), 'utf8')).toBe('old');
    expect(existsSync(join(backing, 'state.tmp'))).toBe(false);
  });

  it('keeps a rename whose directory was synced, and undoes an unsynced O_TRUNC open', async () => {
    const { backing } = await scenario((dir) => {
      writeFileSync(join(dir, 'state'), 'old');
      writeFileSync(join(dir, 'state.tmp'), 'new');
      const tmp = openSync(join(dir, 'state.tmp'), 'r+');
      fsyncSync(tmp);
      closeSync(tmp);
      renameSync(join(dir, 'state.tmp'), join(dir, 'state'));
      syncDir(dir);
      const log = openSync(join(dir, 'log'), 'w');
      writeSync(log, Buffer.alloc(2048, 7));
      fsyncSync(log);
      closeSync(log);
      syncDir(dir);
      closeSync(openSync(join(dir, 'log'), 'w')); // emptied (O_TRUNC), never synced
    });
    expect(readFileSync(join(backing, 'state'), 'utf8')).toBe('new');
    expect(readFileSync(join(backing, 'log')).equals(Buffer.alloc(2048, 7))).toBe(true);
  });

  it('a torn cut keeps a random subset of unsynced sectors, the same for the same seed', async () => {
    const write = (dir: string): void => {
      const fd = openSync(join(dir, 't'), 'w+');
      writeSync(fd, Buffer.alloc(64 * 512, 0), 0, 64 * 512, 0);
      fsyncSync(fd);
      syncDir(dir);
      writeSync(fd, Buffer.alloc(64 * 512, 9), 0, 64 * 512, 0);
      closeSync(fd);
    };
    const one = await scenario(write, { torn: 42 });
    const two = await scenario(write, { torn: 42 });
    const a = readFileSync(join(one.backing, 't'));
    const b = readFileSync(join(two.backing, 't'));
    expect(a.equals(b)).toBe(true);
    const kept = Array.from({ length: 64 }, (_, s) => a[s * 512]).filter((x) => x === 9).length;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(64);
    for (let s = 0; s < 64; s++) expect(a.subarray(s * 512, (s + 1) * 512).every((x) => x === a[s * 512])).toBe(true); // whole sectors
  });
});

describe.skipIf(missingTools('fusermount3', 'qemu-io').length > 0)('a power cut under a real server', () => {
  // Regression (found by this harness): a new export file was created and fsynced but its directory
  // never was, so a power cut took the whole file, flushed data and all.
  it('regression new-file-directory-entry: after FLUSH the data survives the cut; what came after FLUSH may not', async () => {
    const { startNbdMirror } = await import('../support/processes.js');
    const { run } = await import('../support/fixture.js');
    const backing = join(root, 'server-b');
    const m = await mountPowerCut(backing, join(root, 'server-m'));
    const file = join(m.mountpoint, 'disk.img');
    const server = await startNbdMirror(['--export', `disk=${file}`, '--size', '4M']);
    try {
      await run('qemu-io', ['-f', 'raw', server.uri('disk'), '-c', 'write -P 0x5a 0 64k', '-c', 'flush']);
      // Never flushed (qemu-io flushes when it closes the image: our own client does not).
      const { NbdClient } = await import('../support/nbd-client.js');
      const c = await NbdClient.connect({ port: server.port, exportName: 'disk' });
      await c.write(1 << 20, Buffer.alloc(65536, 0x6b));
      c.close();
    } finally {
      await server.stop('SIGKILL');
    }
    const reverted = await m.cut('all');
    const after = readFileSync(join(backing, 'disk.img'));
    expect(after.subarray(0, 65536).every((x) => x === 0x5a)).toBe(true);
    expect(after.subarray(1 << 20, (1 << 20) + 65536).every((x) => x === 0)).toBe(true);
    expect(reverted.sectors).toBeGreaterThan(0);
  });
});
