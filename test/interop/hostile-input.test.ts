// Bad input from one socket: garbage in the handshake and in transmission, bad magic, oversize
// requests, a client that hangs up mid-payload. Each affects that connection only: the server
// keeps serving an already open client and new ones.
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cmd, NbdErr } from '../../src/protocol/constants.js';
import { encodeRequestHeader } from '../../src/protocol/requests.js';
import { NbdClient, NbdReplyError } from '../support/nbd-client.js';
import { serveExport, type Fixture, type ServeMode } from '../support/fixture.js';

/** A deterministic byte source (xorshift32), so a failure can be replayed. */
function prng(seed: number): (n: number) => Buffer {
  let x = seed >>> 0 || 1;
  return (n) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      b[i] = x & 0xff;
    }
    return b;
  };
}

/** Writes bytes on a raw socket and waits (bounded) until the server closes it or 2 s pass. */
async function sendRaw(port: number, bytes: Buffer[]): Promise<void> {
  const s = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(t);
      s.destroy();
      resolve();
    };
    const t = setTimeout(done, 2000);
    s.on('error', done);
    s.on('close', done);
    s.resume(); // read (and drop) what the server says, so its hang-up is seen
    s.on('connect', () => {
      for (const b of bytes) s.write(b);
      s.end();
    });
  });
}

function header(type: number, offset: number, length: number, cookieLo = 1): Buffer {
  const b = Buffer.alloc(28);
  encodeRequestHeader(b, 0, { type, flags: 0, offset, length, cookieHi: 0, cookieLo });
  return b;
}

describe.each<ServeMode>(['standalone', 'mirrored'])('hostile input (%s)', (mode) => {
  let f: Fixture;
  let witness: NbdClient;
  const probe = Buffer.alloc(4096, 0x42);

  beforeAll(async () => {
    f = await serveExport(mode, { size: '64M' });
    witness = await NbdClient.connect({ port: f.server.port, exportName: f.exportName });
    await witness.write(0, probe);
  });
  afterAll(async () => {
    witness?.close();
    await f?.cleanup();
  });

  /** The server still answers the open connection and a new one. */
  async function stillServing(): Promise<void> {
    expect((await witness.read(0, 4096)).equals(probe)).toBe(true);
    const fresh = await NbdClient.connect({ port: f.server.port, exportName: f.exportName });
    expect((await fresh.read(0, 4096)).equals(probe)).toBe(true);
    await fresh.disconnect();
    expect(f.server.proc.exitCode).toBeNull();
    if (f.peer) expect(f.peer.proc.exitCode).toBeNull();
  }

  it('random bytes during the handshake (50 rounds)', async () => {
    const rnd = prng(1);
    for (let round = 0; round < 50; round++) {
      const n = 1 + (rnd(1)[0]! << 2);
      // Half the rounds start with valid client flags so the garbage hits option parsing.
      await sendRaw(f.server.port, round % 2 ? [Buffer.from([0, 0, 0, 3]), rnd(n)] : [rnd(n)]);
    }
    await stillServing();
  });

  it('random bytes during transmission (50 rounds)', async () => {
    const rnd = prng(2);
    for (let round = 0; round < 50; round++) {
      const c = await NbdClient.connect({ port: f.server.port, exportName: f.exportName });
      c.socket.write(rnd(1 + rnd(1)[0]! * 4));
      c.socket.end();
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 2000);
        c.socket.once('close', () => {
          clearTimeout(t);
          resolve();
        });
      });
      c.close();
    }
    await stillServing();
  });

  it('a bad request magic drops that connection only', async () => {
    const c = await NbdClient.connect({ port: f.server.port, exportName: f.exportName });
    const closed = new Promise<void>((resolve) => c.socket.once('close', () => resolve()));
    c.socket.write(Buffer.alloc(28, 0xee));
    await closed;
    await stillServing();
  });

  it('a write over 64 MiB is refused with EINVAL, its payload skipped, and the connection goes on', async () => {
    const c = await NbdClient.connect({ port: f.server.port, exportName: f.exportName, strict: false });
    const big = Buffer.alloc((64 << 20) + 1, 0x77);
    await expect(c.write(0, big)).rejects.toMatchObject({ code: 'EINVAL' });
    expect((await c.read(0, 4096)).equals(probe)).toBe(true);
    await expect(c.read(0, (64 << 20) + 1)).rejects.toBeInstanceOf(NbdReplyError);
    await c.disconnect();
  });

  it('unknown commands and flags get EINVAL and the connection goes on', async () => {
    const c = await NbdClient.connect({ port: f.server.port, exportName: f.exportName, strict: false });
    await expect(c.request(42, 0, 4096)).rejects.toMatchObject({ errno: NbdErr.EINVAL });
    await expect(c.request(Cmd.READ, 0, 4096, 1 << 9)).rejects.toMatchObject({ errno: NbdErr.EINVAL });
    await expect(c.request(Cmd.FLUSH, 0, 4096)).rejects.toMatchObject({ errno: NbdErr.EINVAL });
    expect((await c.read(0, 4096)).equals(probe)).toBe(true);
    await c.disconnect();
  });

  it('a client that disconnects in the middle of a write payload', async () => {
    const c = await NbdClient.connect({ port: f.server.port, exportName: f.exportName, strict: false });
    c.socket.write(Buffer.concat([header(Cmd.WRITE, 0, 1 << 20), Buffer.alloc(100_000, 0x99)]));
    c.socket.destroy();
    await stillServing();
    // The partial payload was never written.
    expect((await witness.read(0, 4096)).equals(probe)).toBe(true);
  });

  it('a client that disconnects in the middle of the handshake', async () => {
    const n = Buffer.alloc(10);
    await sendRaw(f.server.port, [Buffer.from([0, 0, 0, 3]), Buffer.from('IHAVEOPT'), n.subarray(0, 5)]);
    await stillServing();
  });
});
