import { describe, expect, it } from 'vitest';
import { formatSize, parseDuration, parseHostPort, parseSize } from '../../src/config/units.js';

describe('parseSize', () => {
  it('reads plain bytes and binary units', () => {
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('512M')).toBe(512 * 2 ** 20);
    expect(parseSize('1G')).toBe(2 ** 30);
    expect(parseSize('2TiB')).toBe(2 * 2 ** 40);
    expect(parseSize('1.5k')).toBe(1536);
  });
  it('rejects nonsense with a readable message', () => {
    for (const bad of ['', 'big', '-1G', '1X', '0', '0.1']) expect(() => parseSize(bad)).toThrow(/size/);
  });
  it('formats sizes for people', () => {
    expect(formatSize(2 ** 30)).toBe('1 GiB');
    expect(formatSize(1536)).toBe('1.5 KiB');
  });
});

describe('parseHostPort', () => {
  it('reads IPv4, names and bracketed IPv6', () => {
    expect(parseHostPort('127.0.0.1:10809')).toEqual({ host: '127.0.0.1', port: 10809 });
    expect(parseHostPort('localhost:0')).toEqual({ host: 'localhost', port: 0 });
    expect(parseHostPort('[::1]:7')).toEqual({ host: '::1', port: 7 });
  });
  it('rejects missing ports and out-of-range ports', () => {
    for (const bad of ['127.0.0.1', ':80', 'host:99999', '::1:80']) expect(() => parseHostPort(bad)).toThrow(/HOST:PORT/);
  });
});

describe('parseDuration', () => {
  it('reads ms, s and m, and bare numbers as milliseconds', () => {
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('2s')).toBe(2000);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('1m')).toBe(60_000);
    expect(parseDuration('250')).toBe(250);
    expect(parseDuration(750)).toBe(750);
  });

  it('refuses what is not a positive duration', () => {
    for (const bad of ['', 'soon', '0s', '-1s', '2h', '1 sec']) expect(() => parseDuration(bad)).toThrow(/not a duration/);
    expect(() => parseDuration(0)).toThrow(/positive/);
  });
});
