// The test-only `serve --test-faults FILE` in real processes, driven by qemu-io: rules loaded on
// SIGUSR2 fail requests in their range with the errno asked for, a bad file keeps the old rules
// and the process, and named volumes of a cluster node are targeted.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, serveMirroredExport, serveTempExport, type Fixture } from '../support/fixture.js';
import { until } from '../support/cluster.js';
import type { RunningServer } from '../support/processes.js';
import { missingTools } from '../support/tools.js';

const MiB = 1 << 20;

/** Where the spec files live: not in the servers' folders, which their fixtures make. */
const specs = mkdtempSync(join(tmpdir(), 'nbd-mirror-faults-'));
afterAll(() => rmSync(specs, { recursive: true, force: true }));

/** qemu-io's output, failed commands included (it exits 1 when one fails). */
const qemuIo = (uri: string, ...cmds: string[]) => run('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])]).catch((e: Error) => e.message);

const LOADED = 'fault rules loaded';
const REFUSED = 'fault rules not loaded; the previous rules stay in force';
const loads = (s: RunningServer, msg: string) => s.logs.filter((l) => l.component === 'faults' && l.msg === msg);
const outcomes = (s: RunningServer) => loads(s, LOADED).length + loads(s, REFUSED).length;

/** Writes the spec and sends SIGUSR2; resolves once the server has logged the outcome. */
async function reload(s: RunningServer, file: string, spec: string): Promise<Record<string, unknown>> {
  const seen = outcomes(s);
  writeFileSync(file, spec);
  s.proc.kill('SIGUSR2');
  await until(() => outcomes(s) > seen, 10_000);
  return s.logs.filter((l) => l.component === 'faults').at(-1)!;
}

describe.skipIf(missingTools('qemu-io').length > 0)('serve --test-faults', () => {
  describe('standalone export', () => {
    let f: Fixture;
    const faults = join(specs, 'standalone.json');
    beforeAll(async () => {
      f = await serveTempExport({ size: '16M', extraArgs: ['--test-faults', faults] });
    });
    afterAll(() => f?.cleanup());

    it('starts with no rules while the file does not exist, warning that faults are on', async () => {
      expect(loads(f.server, 'test-only fault injection is on (--test-faults): requests may be failed or delayed on purpose')).toHaveLength(1);
      expect(loads(f.server, LOADED)[0]).toMatchObject({ file: faults, rules: 0, volumes: { disk: 0 } });
      expect(await qemuIo(f.uri, 'write -P 0x11 0 64k')).toMatch(/^wrote 65536\/65536 bytes at offset 0$/m);
    });

    it('on SIGUSR2 loads a write-EIO rule: writes in its range fail and change nothing, others succeed', async () => {
      const logged = await reload(f.server, faults, JSON.stringify({ rules: [{ op: 'write', errno: 'EIO', offset: 0, length: '1M' }] }));
      expect(logged).toMatchObject({ msg: LOADED, file: faults, rules: 1, volumes: { disk: 1 } });
      expect(await qemuIo(f.uri, 'write -P 0x55 0 64k')).toMatch(/write failed: Input\/output error/);
      expect(await qemuIo(f.uri, 'write -P 0x55 960k 128k')).toMatch(/write failed: Input\/output error/); // overlaps the end
      expect(await qemuIo(f.uri, 'write -P 0x66 2M 64k')).toMatch(/^wrote 65536\/65536 bytes at offset 2097152$/m);
      const disk = readFileSync(f.file);
      expect(disk.subarray(0, 64 * 1024).every((b) => b === 0x11)).toBe(true);
      expect(disk.subarray(MiB, MiB + 64 * 1024).every((b) => b === 0)).toBe(true);
      expect(disk.subarray(2 * MiB, 2 * MiB + 64 * 1024).every((b) => b === 0x66)).toBe(true);
      expect(f.server.logs.some((l) => l.msg === 'request failed' && l.error === 'EIO' && (l.err as { message?: string }).message === 'injected EIO (fault rules[0])')).toBe(true);
    });

    it('a bad file on SIGUSR2 is logged; the process goes on under the old rules', async () => {
      const logged = await reload(f.server, faults, JSON.stringify({ rules: [{ op: 'write', errno: 'EBOGUS' }] }));
      expect(logged).toMatchObject({ level: 50, msg: REFUSED });
      expect(logged.err).toMatch(/rules\.0\.errno: "EBOGUS" is not an errno name/);
      expect((await reload(f.server, faults, '{"rules": [')).err).toMatch(/is not valid JSON/);
      expect((await reload(f.server, faults, '{"volumes": {"nope": {"rules": []}}}')).err).toMatch(/names volumes this process does not serve: nope \(it serves disk\)/);
      expect(f.server.proc.exitCode).toBeNull();
      expect(await qemuIo(f.uri, 'write -P 0x55 0 64k')).toMatch(/write failed: Input\/output error/);
      expect(await qemuIo(f.uri, 'write -P 0x77 3M 64k')).toMatch(/^wrote 65536/m);
    });

    it('other errnos reach the client as theirs (ENOSPC), and removing the rules heals the disk', async () => {
      await reload(f.server, faults, JSON.stringify({ rules: [{ op: 'write', errno: 'ENOSPC', offset: '4M', length: '4k' }] }));
      expect(await qemuIo(f.uri, 'write -P 0x55 4M 4k')).toMatch(/write failed: No space left on device/);
      expect(await qemuIo(f.uri, 'write -P 0x55 0 64k')).toMatch(/^wrote 65536/m); // the EIO rule is gone
      expect((await reload(f.server, faults, '{"rules": []}')).rules).toBe(0);
      expect(await qemuIo(f.uri, 'write -P 0x55 4M 4k', 'read -P 0x55 4M 4k')).toMatch(/^read 4096\/4096 bytes at offset 4194304$/m);
    });
  });

  describe('without the flag', () => {
    let f: Fixture;
    beforeAll(async () => {
      f = await serveTempExport({ size: '16M' });
    });
    afterAll(() => f?.cleanup());

    it('serves the same range normally and logs nothing of faults', async () => {
      const out = await qemuIo(f.uri, 'write -P 0x55 0 64k', 'read -P 0x55 0 64k');
      expect(out).toMatch(/^read 65536\/65536 bytes at offset 0$/m);
      expect(out).not.toMatch(/failed|error/i);
      expect(f.server.logs.some((l) => l.component === 'faults')).toBe(false);
    });
  });

  describe('cluster node', () => {
    let f: Fixture;
    const faults = join(specs, 'pair.json');
    beforeAll(async () => {
      f = await serveMirroredExport({ size: '16M', extraArgs: ['--test-faults', faults] });
    });
    afterAll(() => f?.cleanup());

    it('fails reads of the named volume on the node whose file says so (the peer then serves them)', async () => {
      expect(await qemuIo(f.uri, 'write -P 0x42 0 64k')).toMatch(/^wrote 65536/m);
      const logged = await reload(f.server, faults, JSON.stringify({ volumes: { vol0: { rules: [{ op: 'read', errno: 'EIO', offset: 0, length: '64k' }] } } }));
      expect(logged).toMatchObject({ msg: LOADED, rules: 1, volumes: { vol0: 1 } });
      // The node's disk fails the read: it gives the disk up (Failed) and serves the read from b.
      expect(await qemuIo(f.uri, 'read -P 0x42 0 64k')).toMatch(/^read 65536\/65536 bytes at offset 0$/m);
      expect(f.server.logs.find((l) => String(l.msg).startsWith('disk Failed'))).toMatchObject({ code: 'EIO', offset: 0 });
      expect(await qemuIo(f.uri, 'read -P 0 1M 64k')).toMatch(/^read 65536\/65536 bytes at offset 1048576$/m);
      // The other node has not re-read the file: its copy reads fine.
      expect(await qemuIo(f.peer!.uri('vol0'), 'read -P 0x42 0 64k')).toMatch(/^read 65536\/65536 bytes at offset 0$/m);
    });
  });
});
