// Thin volumes in a pool served standalone (`serve --pool`), driven by real clients: holes in
// qemu-img map and nbdinfo --map, a freed unit reused by another volume reading zeros, a pool
// filled to ENOSPC by fio while another volume stays intact, and kill -9 during allocating and
// freeing writes followed by `nbd-mirror pool check` (0 problems) and the flushed data intact;
// and a pool on a block device (a loop device).
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { run, runCli } from '../support/fixture.js';
import { until } from '../support/cluster.js';
import { cliPath, startNbdMirror, type RunningServer } from '../support/processes.js';
import { missingTools, toolEnv, toolsRequired } from '../support/tools.js';

const dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-thin-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
/** A standalone server of thin volumes `vols` (NAME=SIZE) in a new pool. */
async function servePool(size: string, vols: string[], extra: string[] = [], path = join(dir, `pool${n++}.img`)): Promise<{ s: RunningServer; path: string }> {
  const s = await startNbdMirror(['--pool', path, '--pool-size', size, ...vols.flatMap((v) => ['--thin', v]), ...extra]);
  return { s, path };
}

const qemuIo = (uri: string, ...cmds: string[]) => run('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])]);
const poolCheck = async (path: string) => JSON.parse(await run(process.execPath, [cliPath, 'pool', 'check', '--json', path])) as { problems: string[]; mappedUnits: number; volumes: Array<{ name: string; mappedUnits: number }> };

describe.skipIf(missingTools('qemu-io', 'qemu-img', 'nbdinfo', 'nbdsh', 'fio').length > 0)('thin volumes, standalone (serve --pool)', () => {
  it('qemu-img map and nbdinfo --map show unwritten and zeroed units as holes', async () => {
    const { s } = await servePool('64M', ['a=1G'], ['--pool-unit', '1M']);
    try {
      await qemuIo(s.uri('a'), 'write -P 0xab 1M 64k', 'write -P 0xcd 4M 2M', 'write -z -u 4M 1M', 'write -P 3 8M 1M', 'write -z 8M 1M', 'write -P 7 12M 1M', 'write -P 0 12M 1M', 'discard 5M 1M', 'write -P 1 5M 4k');
      const map = JSON.parse(await run('qemu-img', ['map', '-f', 'raw', '--output=json', s.uri('a')])) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
      const data = map.filter((e) => e.data).map((e) => [e.start / 2 ** 20, e.length / 2 ** 20]);
      expect(data).toEqual([
        [1, 1],
        [5, 1],
        [8, 1],
      ]);
      const info = await run('nbdinfo', ['--map', s.uri('a')]);
      expect(info).toMatch(/^\s*0\s+1048576\s+3\s+hole,zero$/m);
      expect(info).toMatch(/^\s*1048576\s+1048576\s+0\s+data$/m);
      // WRITE_ZEROES without unmap permission (NO_HOLE) keeps its unit, zeroed.
      expect(info).toMatch(/^\s*8388608\s+1048576\s+0\s+data$/m);
      expect(info).toMatch(/^\s*9437184\s+1064304640\s+3\s+hole,zero$/m);
      // A structured read over holes and data: the holes come as OFFSET_HOLE chunks.
      const py = [
        'import nbd',
        'h = nbd.NBD()',
        `h.connect_uri("${s.uri('a')}")`,
        'chunks = []',
        'def cb(subbuf, offset, status, err):',
        '    chunks.append((offset, len(subbuf), status))',
        '    return 0',
        'buf = h.pread_structured(4 << 20, 0, cb)',
        'holes = sorted((o, n) for o, n, st in chunks if st == nbd.READ_HOLE)',
        'data = sorted((o, n) for o, n, st in chunks if st == nbd.READ_DATA)',
        'assert holes == [(0, 1 << 20), (2 << 20, 2 << 20)], chunks',
        'assert data == [(1 << 20, 1 << 20)], chunks',
        'assert buf[1 << 20:(1 << 20) + 65536] == b"\\xab" * 65536',
        'print("ALL OK")',
      ].join('\n');
      expect(await run('nbdsh', ['-c', py])).toContain('ALL OK');
      // Structured reads of the holes (OFFSET_HOLE) and the data read back right.
      await qemuIo(s.uri('a'), 'read -P 0 0 1M', 'read -P 0xab 1M 64k', 'read -P 0 4M 1M', 'read -P 0 8M 1M', 'read -P 0 12M 1M', 'read -P 1 5M 4k', 'read -P 0 5246976 1020k');
    } finally {
      await s.stop();
    }
  });

  it('a unit one volume freed and another reused reads zeros wherever the new owner has not written', async () => {
    const { s, path } = await servePool('2M', ['a=16M', 'b=16M'], ['--pool-unit', '1M']);
    try {
      // a fills the whole pool with a pattern, then gives it back.
      await qemuIo(s.uri('a'), 'write -P 0x5a 0 2M', 'flush', 'discard 0 2M', 'flush');
      // b gets those very units: only what b wrote is there, the rest reads zeros.
      await qemuIo(s.uri('b'), 'write -P 0x11 4k 4k', 'write -P 0x22 9M 512', 'read -P 0 0 4k', 'read -P 0x11 4k 4k', 'read -P 0 8k 1040384', 'read -P 0 8M 1M', 'read -P 0x22 9M 512', 'read -P 0 9437696 1048064');
      await qemuIo(s.uri('a'), 'read -P 0 0 2M');
    } finally {
      await s.stop();
    }
    const report = await poolCheck(path);
    expect(report.problems).toEqual([]);
    expect(report.volumes.find((v) => v.name === 'b')!.mappedUnits).toBe(2);
  });

  it('fio fills the pool to ENOSPC while another volume stays intact and writable', async () => {
    const { s, path } = await servePool('48M', ['keep=64M', 'fill=1G'], ['--pool-unit', '1M']);
    try {
      await qemuIo(s.uri('keep'), 'write -P 0x77 0 8M', 'flush');
      const out = await run('fio', [
        '--name=fill',
        '--ioengine=nbd',
        `--uri=${s.uri('fill')}`,
        '--rw=randwrite',
        '--bs=64k',
        '--iodepth=16',
        '--size=1G',
        '--io_size=512M',
        '--output-format=json',
      ]).catch((e: Error) => e.message);
      // fio stops at the first ENOSPC (its exit status carries it).
      expect(out).toMatch(/No space left on device|error=28|"error" : 28/);
      // The other volume: its data intact, overwrites and reads go on.
      await qemuIo(s.uri('keep'), 'read -P 0x77 0 8M', 'write -P 0x78 0 1M', 'read -P 0x78 0 1M');
      // A write needing a new unit fails; one into an allocated unit does not.
      await expect(qemuIo(s.uri('keep'), 'write -P 1 32M 4k')).rejects.toThrow(/No space left on device/);
      const errors = s.logs.filter((l) => String(l.msg).startsWith('pool full'));
      expect(errors.length).toBeGreaterThan(0);
      expect(s.logs.filter((l) => String(l.msg).startsWith('pool use crossed')).map((l) => l.threshold)).toEqual([75, 90]);
    } finally {
      await s.stop();
    }
    const report = await poolCheck(path);
    expect(report.problems).toEqual([]);
    expect(report.mappedUnits).toBe(48);
  });

  it('grows online on SIGHUP to the size in POOL.size', async () => {
    const { s, path } = await servePool('2M', ['a=16M'], ['--pool-unit', '1M']);
    try {
      await qemuIo(s.uri('a'), 'write -P 1 0 2M');
      await expect(qemuIo(s.uri('a'), 'write -P 2 8M 4k')).rejects.toThrow(/No space left on device/);
      writeFileSync(`${path}.size`, '4M\n');
      s.proc.kill('SIGHUP');
      await until(() => s.logs.some((l) => l.msg === 'pool grown online' && l.toBytes === 4 * 2 ** 20), 10_000);
      await qemuIo(s.uri('a'), 'write -P 2 8M 4k', 'read -P 2 8M 4k', 'read -P 1 0 2M');
    } finally {
      await s.stop();
    }
    expect((await poolCheck(path)).problems).toEqual([]);
  });

  it('kill -9 during allocating and freeing writes: pool check finds 0 problems and flushed data is there', async () => {
    const path = join(dir, 'chaos.img');
    let mostMapped = 0;
    for (let round = 1; round <= 5; round++) {
      const { s } = await servePool('32M', ['a=256M', 'b=256M'], ['--pool-unit', '64K'], path);
      // What this round flushes (FUA) must survive: a pattern per round at a fixed place of each volume.
      await qemuIo(s.uri('a'), `write -P ${round} -f 0 64k`);
      await qemuIo(s.uri('b'), `write -P ${round + 100} -f 1M 4k`);
      // Then random writes and trims fight over the pool until kill -9 lands in the middle.
      const jobs = ['a', 'b'].map((v) =>
        spawn('fio', ['--name=churn', '--ioengine=nbd', `--uri=${s.uri(v)}`, '--rw=randrw', '--rwmixread=0', '--bsrange=4k-256k', '--iodepth=8', '--size=255M', '--offset=1M', '--io_size=2G', '--time_based', '--runtime=30', '--trim_percentage=30', '--fsync=32', '--ignore_error=ENOSPC,EIO', '--continue_on_error=all'], { stdio: 'ignore', env: toolEnv() }),
      );
      // Both fio connections attached (after the two qemu-io ones), then a while of churn.
      await until(() => s.logs.filter((l) => l.msg === 'client attached').length >= 4, 30_000);
      await new Promise((r) => setTimeout(r, 300 + 200 * round));
      s.proc.kill('SIGKILL');
      await new Promise((r) => s.proc.once('exit', r));
      for (const j of jobs) j.kill('SIGKILL');
      const report = await poolCheck(path);
      expect(report.problems).toEqual([]);
      mostMapped = Math.max(mostMapped, report.mappedUnits);
      const again = await startNbdMirror(['--pool', path, '--thin', 'a=256M', '--thin', 'b=256M']);
      try {
        await qemuIo(again.uri('a'), `read -P ${round} 0 64k`);
        await qemuIo(again.uri('b'), `read -P ${round + 100} 1M 4k`);
      } finally {
        await again.stop();
      }
    }
    // The churn got far enough to commit allocations of its own (fio flushes every 32 writes).
    expect(mostMapped).toBeGreaterThan(2);
  });
});

/** Root and losetup, or a loud skip (a failure under NBD_MIRROR_REQUIRE_TOOLS). */
function canUseLoopDevices(): boolean {
  const root = process.getuid?.() === 0;
  if (!root) {
    const msg = 'a pool on a block device needs root (losetup)';
    if (toolsRequired) throw new Error(msg);
    console.warn(`\n*** SKIPPING: ${msg} ***\n`);
  }
  return root && missingTools('losetup', 'qemu-io', 'nbdinfo').length === 0;
}

describe.skipIf(!canUseLoopDevices())('a pool on a block device (a loop device)', () => {
  it('is made on a blank device and sized from it, keeps data across kill -9, reuses units as zeros; a device that is not blank is refused', async () => {
    const backing = join(dir, 'device.img');
    writeFileSync(backing, '');
    truncateSync(backing, 64 * 2 ** 20);
    const device = (await run('losetup', ['-f', '--show', backing])).trim();
    try {
      // No --pool-size: the pool takes the device (less its metadata).
      const s = await startNbdMirror(['--pool', device, '--pool-unit', '1M', '--thin', 'a=1G', '--thin', 'b=1G']);
      try {
        expect(s.logs.find((l) => l.msg === 'pool open')).toMatchObject({ pool: device, unitBytes: 2 ** 20 });
        await qemuIo(s.uri('a'), 'write -P 0xab -f 0 4M', 'write -P 0xcd -f 512M 1M', 'discard 1M 1M', 'flush');
        expect(await run('nbdinfo', ['--map', s.uri('a')])).toMatch(/^\s*1048576\s+1048576\s+3\s+hole,zero$/m);
        // The freed unit goes to b: zeros wherever b has not written.
        await qemuIo(s.uri('b'), 'write -P 0x11 4k 4k', 'read -P 0 0 4k', 'read -P 0 8k 1040384');
        s.proc.kill('SIGKILL');
        await new Promise((r) => s.proc.once('exit', r));
      } finally {
        await s.stop();
      }
      const report = await poolCheck(device);
      expect(report.problems).toEqual([]);
      expect(report.volumes.find((v) => v.name === 'a')?.mappedUnits).toBe(4); // 3 of the first 4 MiB and 1 at 512M
      const again = await startNbdMirror(['--pool', device, '--thin', 'a=1G', '--thin', 'b=1G']);
      try {
        await qemuIo(again.uri('a'), 'read -P 0xab 0 1M', 'read -P 0 1M 1M', 'read -P 0xab 2M 2M', 'read -P 0xcd 512M 1M');
        await qemuIo(again.uri('b'), 'read -P 0x11 4k 4k');
      } finally {
        await again.stop();
      }
    } finally {
      await run('losetup', ['-d', device]);
    }
    // A device holding something else (here: a filesystem's first block) is never made a pool.
    const other = join(dir, 'other.img');
    writeFileSync(other, Buffer.alloc(4096, 0x53));
    truncateSync(other, 64 * 2 ** 20);
    const busy = (await run('losetup', ['-f', '--show', other])).trim();
    try {
      const r = await runCli(['serve', '--pool', busy, '--thin', 'a=1G', '--listen', '127.0.0.1:0']);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/holds no pool but is not blank/);
      expect(readFileSync(other).subarray(0, 4096).every((b) => b === 0x53)).toBe(true);
    } finally {
      await run('losetup', ['-d', busy]);
    }
  });
});
