// XXH3-64 in WASM against two independent implementations, for every length 0…4096, larger
// sizes, unaligned offsets, and the batched block call.
import { xxh3 as nodeRsXxh3 } from '@node-rs/xxhash';
import { createXXHash3 } from 'hash-wasm';
import { beforeAll, describe, expect, it } from 'vitest';
import { Hotpath, HotpathError } from '../../src/hotpath/index.js';

const hex = (v: bigint) => v.toString(16).padStart(16, '0');

describe('XXH3-64', () => {
  const hot = Hotpath.create({ slotArenaBytes: 16 << 20, digests: 8192, digestLists: 3 });
  let hashWasm: Awaited<ReturnType<typeof createXXHash3>>;
  beforeAll(async () => {
    hashWasm = await createXXHash3();
  });
  const ref = (data: Uint8Array) => {
    hashWasm.init();
    hashWasm.update(data);
    return hashWasm.digest('hex');
  };

  it('matches hash-wasm and @node-rs/xxhash for every length 0…4096 at every alignment mod 16', () => {
    const slot = hot.slots.acquire(65536);
    for (let i = 0; i < slot.length; i++) slot[i] = (i * 2654435761) >>> 24;
    for (let len = 0; len <= 4096; len++) {
      const at = len % 16; // unaligned starts
      const data = slot.subarray(at, at + len);
      const ours = hex(hot.xxh3(data));
      expect(ours, `length ${len}`).toBe(ref(data));
      if (len % 97 === 0) expect(ours).toBe(hex(nodeRsXxh3.xxh64(Buffer.from(data))));
    }
    hot.slots.release(slot);
  });

  it('matches on random data of large and odd sizes', () => {
    const slot = hot.slots.acquire(8 << 20);
    for (const len of [4097, 65536, 65537, 1 << 20, (1 << 20) + 1023, 3_000_001, 8 << 20]) {
      const data = slot.subarray(0, len);
      crypto.getRandomValues(data.subarray(0, Math.min(len, 65536)));
      data.copyWithin(65536, 0, Math.max(0, len - 65536));
      expect(hex(hot.xxh3(data)), `length ${len}`).toBe(ref(data));
      expect(hex(hot.xxh3(data))).toBe(hex(nodeRsXxh3.xxh64(Buffer.from(data))));
    }
    hot.slots.release(slot);
  });

  it('digestOf hashes buffers outside WASM memory through staging, and refuses what does not fit', () => {
    for (const len of [0, 1, 4096, 65536]) {
      const data = Buffer.alloc(len, 0x5c);
      expect(hex(hot.digestOf(data)), `length ${len}`).toBe(ref(data));
    }
    const inSlot = hot.slots.acquire(1 << 20);
    inSlot.fill(7);
    expect(hex(hot.digestOf(inSlot))).toBe(ref(inSlot));
    hot.slots.release(inSlot);
    expect(() => hot.digestOf(Buffer.alloc(65537))).toThrow(expect.objectContaining({ code: 'HOTPATH_RANGE' }));
    const list = hot.digestList(16);
    const plain = Buffer.alloc(65536);
    plain.fill(9, 4096 * 3, 4096 * 4);
    expect(hot.blockDigests(plain, 4096, list)).toBe(16);
    expect(hex(list.values[3]!)).toBe(ref(plain.subarray(4096 * 3, 4096 * 4)));
    expect(hex(list.values[0]!)).toBe(ref(plain.subarray(0, 4096)));
  });

  it('hashes a batch of blocks into a digest list, each equal to the single-block hash', () => {
    const list = hot.digestList(4096);
    const slot = hot.slots.acquire(2 << 20);
    crypto.getRandomValues(slot.subarray(0, 65536));
    for (let off = 65536; off < slot.length; off += 65536) slot.copyWithin(off, 0, 65536);
    slot[1 << 20] = slot[1 << 20]! ^ 1;
    for (const bs of [512, 4096, 65536, 1 << 20]) {
      const n = hot.blockDigests(slot, bs, list);
      expect(n).toBe(slot.length / bs);
      for (let i = 0; i < n; i += Math.max(1, n >> 4)) expect(hex(list.values[i]!)).toBe(ref(slot.subarray(i * bs, (i + 1) * bs)));
    }
    hot.slots.release(slot);
  });

  it('refuses bad block sizes and buffers outside WASM memory, with stable codes', () => {
    const list = hot.digestList(16);
    const slot = hot.slots.acquire(65536);
    expect(() => hot.blockDigests(slot, 3000, list)).toThrow(expect.objectContaining({ code: 'HOTPATH_BLOCK_SIZE' }));
    expect(() => hot.blockDigests(slot, 256, list)).toThrow(HotpathError);
    expect(() => hot.blockDigests(slot, 512, list)).toThrow(expect.objectContaining({ code: 'HOTPATH_RANGE' }));
    expect(() => hot.xxh3(Buffer.alloc(10))).toThrow(expect.objectContaining({ code: 'HOTPATH_NOT_WASM_MEMORY' }));
    hot.slots.release(slot);
  });
});
