// Parsing what people type: sizes ("512M", "1G", "4KiB", "1073741824"; binary units, as
// dd and qemu-img use) and HOST:PORT addresses.

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new Error(`"${text}" is not a size (examples: 4096, 512M, 1G, 2TiB)`);
  const bytes = Number(m[1]) * UNITS[m[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new Error(`size "${text}" must be a whole, positive number of bytes`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = bytes;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** "127.0.0.1:10809", "localhost:0", "[::1]:10809". */
export function parseHostPort(text: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(text);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new Error(`"${text}" is not HOST:PORT (example: 127.0.0.1:10809)`);
  return { host: m[1] ?? m[2]!, port };
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000 };

/** "2s", "500ms", "1.5s", "1m"; a bare number is milliseconds. Returns milliseconds. */
export function parseDuration(text: string | number): number {
  if (typeof text === 'number') {
    if (!Number.isFinite(text) || text <= 0) throw new Error(`duration ${text} must be a positive number of milliseconds`);
    return text;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(text);
  const ms = m ? Number(m[1]) * DURATION_UNITS[m[2] ?? 'ms']! : NaN;
  if (!m || !(ms > 0)) throw new Error(`"${text}" is not a duration (examples: 500ms, 2s, 1m)`);
  return ms;
}
