// NBD over TLS with the real clients (gnutls inside libnbd and qemu): PSK and X.509, the
// three modes, refusals that end only the refused connection and say why in the server log.
import { randomFillSync } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type net from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, runCli, serveMirroredExport, serveTempExport, type Fixture } from '../support/fixture.js';
import { until } from '../support/cluster.js';
import type { RunningServer } from '../support/processes.js';
import { missingTools } from '../support/tools.js';
import { makeTlsKeys, PSK_USER, withLibnbdCerts, type TlsKeys } from '../support/tls.js';
import { closed, rawConnect } from '../support/raw-nbd.js';
import { optionBytes } from '../support/nbd-client.js';
import { Opt, Rep } from '../../src/protocol/constants.js';

const MiB = 2 ** 20;
const tools = ['nbdinfo', 'nbdcopy', 'qemu-io', 'fio', 'psktool', 'certtool', ...(process.geteuid?.() === 0 ? ['setpriv'] : [])];

async function runCliOk(args: string[]): Promise<void> {
  const r = await runCli(args);
  if (r.code !== 0) throw new Error(`nbd-mirror ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
}

function pskUri(f: Fixture, keyFile: string, user = PSK_USER): string {
  // The user goes in the authority: libnbd 1.14 ignores tls-username= in the query.
  return `nbds://${user}@127.0.0.1:${f.server.port}/${f.exportName}?tls-psk-file=${keyFile}`;
}

function x509Uri(f: Fixture, certs: string): string {
  return `nbds://127.0.0.1:${f.server.port}/${f.exportName}?tls-certificates=${certs}`;
}

/** qemu-io over TLS: `creds` is a --object tls-creds-… with id tls0. */
function qemuIo(f: Fixture, creds: string, ...commands: string[]): Promise<string> {
  const image = `driver=nbd,host=127.0.0.1,port=${f.server.port},export=${f.exportName},tls-creds=tls0`;
  return run('qemu-io', ['--object', creds, '--image-opts', image, ...commands.flatMap((c) => ['-c', c])]);
}

/** Resolves once the server has logged a line that `match` accepts, and returns it. */
async function logged(server: RunningServer, match: (l: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  await until(() => server.logs.some(match), 10_000);
  return server.logs.find(match)!;
}

const tlsFailure = (reason: RegExp) => (l: Record<string, unknown>) => l.msg === 'TLS handshake failed, dropping connection' && reason.test(String(l.reason));

/** The next `n` bytes the socket receives. */
function bytes(s: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length < n) return;
      s.off('data', onData);
      resolve(got.subarray(0, n));
    };
    s.on('data', onData);
    s.once('close', () => reject(new Error(`closed after ${got.length} of ${n} bytes`)));
  });
}

/** A raw client past the greeting that sent STARTTLS with `after` right behind it; `reply` is the reply type. */
async function rawStartTls(port: number, after: Buffer = Buffer.alloc(0)): Promise<{ s: net.Socket; reply: Promise<number> }> {
  const s = await rawConnect(port, { read: true });
  await bytes(s, 18);
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(3);
  s.write(Buffer.concat([flags, optionBytes(Opt.STARTTLS), after]));
  return { s, reply: bytes(s, 20).then((r) => r.readUInt32BE(12)) };
}

/** A random file of `size` bytes copied in and back out with nbdcopy through `uri`; both ends compared. */
async function roundTrip(f: Fixture, uri: string, size = 8 * MiB): Promise<void> {
  const src = join(f.dir, 'src.img');
  const back = join(f.dir, 'back.img');
  writeFileSync(src, randomFillSync(Buffer.alloc(size)));
  await run('nbdcopy', [src, uri]);
  await run('nbdcopy', [uri, back]);
  expect(readFileSync(back).subarray(0, size).equals(readFileSync(src))).toBe(true);
  // What went in is on the server's disk, as plain bytes (encryption is only on the wire).
  expect(readFileSync(f.file).subarray(0, size).equals(readFileSync(src))).toBe(true);
}

describe.skipIf(missingTools(...tools).length > 0)('NBD over TLS', () => {
  let keys: TlsKeys;
  beforeAll(() => {
    keys = makeTlsKeys();
  });
  afterAll(() => keys?.cleanup());

  describe('PSK, --tls require', () => {
    let f: Fixture;
    beforeAll(async () => {
      f = await serveTempExport({ size: '64M', extraArgs: ['--tls', 'require', '--tls-psk', keys.psk] });
    });
    afterAll(() => f?.cleanup());

    it('qemu-io with tls-creds-psk writes a pattern and reads it back', async () => {
      const creds = `tls-creds-psk,id=tls0,dir=${keys.qemuPskDir},username=${PSK_USER},endpoint=client`;
      await qemuIo(f, creds, 'write -P 0x5a 1M 2M');
      const out = await qemuIo(f, creds, 'read -P 0x5a 1M 2M', 'read -P 0 0 1M');
      expect(out).toContain('read 2097152/2097152 bytes at offset 1048576');
      expect(readFileSync(f.file).subarray(MiB, 3 * MiB).every((b) => b === 0x5a)).toBe(true);
      expect(await logged(f.server, (l) => l.msg === 'TLS started')).toMatchObject({ pskIdentity: PSK_USER, tlsProtocol: 'TLSv1.3' });
    });

    it('nbdinfo with an nbds:// URI and tls-psk-file shows the export, over TLS', async () => {
      const j = JSON.parse(await run('nbdinfo', ['--json', pskUri(f, keys.psk)]));
      expect(j.TLS).toBe(true);
      expect(j.exports[0]).toMatchObject({ 'export-name': 'disk', 'export-size': 64 * MiB });
    });

    it('nbdcopy copies a file in and out byte for byte', async () => {
      await roundTrip(f, pskUri(f, keys.psk));
    });

    it('a plain client is answered ERR_TLS_REQD and gets nothing', async () => {
      const plain = run('nbdinfo', ['--json', f.uri], { env: { LIBNBD_DEBUG: '1' } });
      await expect(plain).rejects.toThrow(/server error message: this server requires TLS/);
    });

    it('qemu-io without TLS credentials is refused', async () => {
      await expect(run('qemu-io', ['-f', 'raw', f.uri, '-c', 'read 0 4k'])).rejects.toThrow(/TLS/);
    });

    it('a wrong key is refused, and the server says why once', async () => {
      await expect(run('nbdinfo', [pskUri(f, keys.wrongPsk)])).rejects.toThrow(/nbdinfo/);
      const line = await logged(f.server, tlsFailure(/./));
      expect(line.level).toBe(40);
      expect(f.server.logs.filter(tlsFailure(/./)).length).toBe(1);
    });

    it('cleartext sent behind STARTTLS is never read: the connection is dropped', async () => {
      const { s, reply } = await rawStartTls(f.server.port, optionBytes(Opt.LIST));
      await expect(reply).rejects.toThrow(/closed/);
      await closed(s, 5000);
      await logged(f.server, (l) => l.msg === 'handshake failed, dropping connection' && l.reason === 'cleartext bytes after STARTTLS');
    });

    it('a TLS handshake that never comes is dropped at the handshake limit (10 s)', async () => {
      const { s, reply } = await rawStartTls(f.server.port);
      expect(await reply).toBe(Rep.ACK);
      await closed(s, 15_000); // the client says nothing more: no ClientHello
      expect(await logged(f.server, (l) => l.msg === 'handshake not finished in time, dropping connection')).toMatchObject({ tlsHandshake: true });
    }, 30_000);

    it('an identity not in the key file is refused', async () => {
      const other = join(keys.dir, 'bob.psk');
      writeFileSync(other, readFileSync(keys.psk, 'utf8').replace(`${PSK_USER}:`, 'bob:'));
      await expect(run('nbdinfo', [pskUri(f, other, 'bob')])).rejects.toThrow(/nbdinfo/);
      await logged(f.server, tlsFailure(/PSK identity "bob" is not in the key file/));
      // and the server goes on serving the others
      expect(JSON.parse(await run('nbdinfo', ['--json', pskUri(f, keys.psk)])).TLS).toBe(true);
    });
  });

  describe('X.509, --tls require --tls-verify-peer', () => {
    let f: Fixture;
    beforeAll(async () => {
      f = await serveTempExport({ size: '64M', extraArgs: ['--tls', 'require', '--tls-certificates', keys.serverCerts, '--tls-verify-peer'] });
    });
    afterAll(() => f?.cleanup());

    it('qemu-io with tls-creds-x509 and a client certificate writes and reads back', async () => {
      const creds = `tls-creds-x509,id=tls0,dir=${keys.clientCerts},endpoint=client`;
      await qemuIo(f, creds, 'write -P 0xc3 0 1M');
      expect(await qemuIo(f, creds, 'read -P 0xc3 0 1M')).toContain('read 1048576/1048576 bytes at offset 0');
    });

    it('nbdinfo with tls-certificates shows the export', async () => {
      const j = JSON.parse(await run('nbdinfo', ['--json', x509Uri(f, keys.clientCerts)]));
      expect(j.TLS).toBe(true);
      expect(j.exports[0]['export-name']).toBe('disk');
    });

    it('nbdcopy copies a file in and out byte for byte', async () => {
      await roundTrip(f, x509Uri(f, keys.clientCerts));
    });

    it('fio --ioengine=nbd writes and verifies (crc32c) through nbds://', async () => {
      const c = withLibnbdCerts(keys, keys.clientCerts, 'fio', [
        '--verify_state_save=0', // nothing to write into the working directory
        '--name=tls',
        '--ioengine=nbd',
        `--uri=nbds://127.0.0.1:${f.server.port}/disk`,
        '--rw=randwrite',
        '--bs=64k',
        '--size=8M',
        '--verify=crc32c',
        '--do_verify=1',
        '--output-format=json',
      ]);
      const out = await run(c.cmd, c.args);
      const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0]; // fio says "connected to NBD server" first
      expect(job.error).toBe(0);
      expect(job.write.io_bytes).toBe(8 * MiB);
      expect(job.read.io_bytes).toBe(8 * MiB); // the verify pass read it all back
    });

    it('a client without a certificate is refused, and the server says why', async () => {
      await expect(run('nbdinfo', [x509Uri(f, keys.clientNoCert)])).rejects.toThrow(/nbdinfo/);
      await logged(f.server, tlsFailure(/peer did not return a certificate/));
    });

    it('a client certificate of an unknown CA is refused, and the server says why', async () => {
      // gnutls sends no certificate the server's CA list does not name (the server logs "peer did
      // not return a certificate"); Node's client sends it anyway, so the CA check itself is tried.
      await expect(run('nbdinfo', [x509Uri(f, keys.rogueClientCerts)])).rejects.toThrow(/nbdinfo/);
      const { s, reply } = await rawStartTls(f.server.port);
      expect(await reply).toBe(Rep.ACK);
      const read = (name: string) => readFileSync(join(keys.rogueClientCerts, name));
      const t = tls.connect({ socket: s, ca: read('ca-cert.pem'), cert: read('client-cert.pem'), key: read('client-key.pem'), servername: 'localhost' });
      t.on('error', () => undefined); // the server hangs up: that is the point
      await closed(t, 10_000);
      await logged(f.server, tlsFailure(/client certificate refused: UNABLE_TO_VERIFY_LEAF_SIGNATURE/));
    });

    it('a client that does not trust the server CA refuses it', async () => {
      await expect(run('nbdinfo', [x509Uri(f, keys.otherCaCerts)])).rejects.toThrow(/certificate verification/);
    });
  });

  describe('--tls on (STARTTLS offered)', () => {
    let f: Fixture;
    beforeAll(async () => {
      f = await serveTempExport({ size: '16M', extraArgs: ['--tls', 'on', '--tls-certificates', keys.serverCerts] });
    });
    afterAll(() => f?.cleanup());

    it('serves a plain client and a TLS client (no client certificate needed without --tls-verify-peer)', async () => {
      expect(JSON.parse(await run('nbdinfo', ['--json', f.uri])).TLS).toBe(false);
      expect(JSON.parse(await run('nbdinfo', ['--json', x509Uri(f, keys.clientNoCert)])).TLS).toBe(true);
      await run('qemu-io', ['-f', 'raw', f.uri, '-c', 'write -P 0x11 0 64k']);
      const creds = `tls-creds-x509,id=tls0,dir=${keys.clientNoCert},endpoint=client`;
      await qemuIo(f, creds, 'read -P 0x11 0 64k');
    });
  });

  describe('a mirrored pair, TLS per node', () => {
    let f: Fixture;
    beforeAll(async () => {
      // Node a takes PSK, node b X.509, each from nodes.NAME.tls; paths relative to the config file.
      f = await serveMirroredExport({
        size: '16M',
        config: (dir) => {
          copyFileSync(keys.psk, join(dir, 'a.psk'));
          return { nodeA: { tls: { mode: 'require', psk: 'a.psk' } }, nodeB: { tls: { mode: 'require', certificates: keys.serverCerts } } };
        },
      });
    });
    afterAll(() => f?.cleanup());

    it('data written through node a over TLS (PSK) reads back through node b over TLS (X.509)', async () => {
      await qemuIo(f, `tls-creds-psk,id=tls0,dir=${keys.qemuPskDir},username=${PSK_USER},endpoint=client`, 'write -P 0x7e 0 1M');
      const b = { ...f, server: f.peer! };
      expect(await qemuIo(b, `tls-creds-x509,id=tls0,dir=${keys.clientNoCert},endpoint=client`, 'read -P 0x7e 0 1M')).toContain('read 1048576/1048576 bytes');
      await expect(run('nbdinfo', [f.uri])).rejects.toThrow(/nbdinfo/); // plain refused on a
      await expect(run('nbdinfo', [f.peer!.uri('vol0')])).rejects.toThrow(/nbdinfo/); // and on b
    });
  });

  describe('certificates from nbd-mirror keygen: a node\'s, and a host\'s (--client) for --tls-verify-peer', () => {
    let f: Fixture;
    let dir: string;
    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'nbd-mirror-keygen-tls-'));
      const config = join(dir, 'cluster.json');
      writeFileSync(config, JSON.stringify({ nodes: { a: { nbd: '127.0.0.1:10809', peer: '127.0.0.1:7789', admin: '127.0.0.1:9180', dataDir: 'a' }, b: { nbd: '127.0.0.1:10810', peer: '127.0.0.1:7790', admin: '127.0.0.1:9181', dataDir: 'b' } }, volumes: { vol0: { size: '1G' } } }));
      await runCliOk(['keygen', '--dir', join(dir, 'keys'), '--ca', '--config', config, '--client', 'host1']);
      await runCliOk(['keygen', '--dir', join(dir, 'keys'), '--client', 'host2']); // later, from the CA kept in keys/ca
      f = await serveTempExport({ size: '16M', extraArgs: ['--tls', 'require', '--tls-certificates', join(dir, 'keys', 'certs', 'a'), '--tls-verify-peer'] });
    });
    afterAll(async () => {
      await f?.cleanup();
      rmSync(dir, { recursive: true, force: true });
    });

    it('qemu-io and nbdinfo with either host\'s folder get in; a certificate of another CA, or none, is refused', async () => {
      const host = (n: string) => join(dir, 'keys', 'clients', n);
      await qemuIo(f, `tls-creds-x509,id=tls0,dir=${host('host1')},endpoint=client`, 'write -P 0x4b 0 1M');
      expect(await qemuIo(f, `tls-creds-x509,id=tls0,dir=${host('host2')},endpoint=client`, 'read -P 0x4b 0 1M')).toContain('read 1048576/1048576 bytes');
      expect(JSON.parse(await run('nbdinfo', ['--json', x509Uri(f, host('host2'))])).TLS).toBe(true);
      // The suite's own client certificate is of another CA; a folder with only the CA has none.
      const ours = join(dir, 'ca-only');
      mkdirSync(ours);
      copyFileSync(join(host('host1'), 'ca-cert.pem'), join(ours, 'ca-cert.pem'));
      await expect(run('nbdinfo', [x509Uri(f, ours)])).rejects.toThrow(/nbdinfo/);
      await expect(run('nbdinfo', [x509Uri(f, keys.clientCerts)])).rejects.toThrow(/nbdinfo/);
    });
  });
});
