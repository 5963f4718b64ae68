// Raw NBD bytes for attacks: a handshake and requests pipelined on a socket that reads what the
// test decides (or nothing at all), and the server's memory as the kernel counts it.
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { Opt } from '../../src/protocol/constants.js';
import { encodeRequestHeader } from '../../src/protocol/requests.js';
import { optionBytes } from './nbd-client.js';

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** Client flags, STRUCTURED_REPLY and GO for `exportName`, all at once (no reply awaited). */
export function handshakeBytes(exportName: string): Buffer {
  const name = Buffer.from(exportName);
  const go = Buffer.concat([u32(name.length), name, Buffer.from([0, 0])]);
  return Buffer.concat([u32(3), optionBytes(Opt.STRUCTURED_REPLY), optionBytes(Opt.GO, go)]);
}

export function requestHeader(type: number, offset: number, length: number, cookieLo = 1, flags = 0): Buffer {
  const b = Buffer.alloc(28);
  encodeRequestHeader(b, 0, { type, flags, offset, length, cookieHi: 0, cookieLo });
  return b;
}

/** Connects; `read: false` leaves the socket paused, so the client takes (almost) nothing the server sends. */
export async function rawConnect(port: number, opts: { read: boolean }): Promise<net.Socket> {
  const s = net.connect(port, '127.0.0.1');
  if (!opts.read) s.pause();
  else s.resume();
  s.on('error', () => undefined); // the server may reset us: that is what some tests expect
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  return s;
}

/** Resolves when the socket is closed (by either side), or rejects after `ms`. */
export function closed(s: net.Socket, ms: number): Promise<void> {
  if (s.destroyed) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms);
    s.once('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/** Resident and peak resident memory of a process, in bytes (Linux /proc). */
export function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1]) * 1024;
  return { rss: kib('VmRSS'), peak: kib('VmHWM') };
}
