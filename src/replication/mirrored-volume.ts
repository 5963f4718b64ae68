// A volume mirrored to the peer node (protocol C): a write completes only when it is on both
// nodes, or — with the peer gone — once the dirty bits covering it are durable here.
// Groundwork for two-node mirroring: tested in-process; `serve --config` does not use it yet.
//
// Overlapping writes racing on both nodes. A write is "in flight" on a node from when it starts
// (local) or arrives (from the peer) until its WRITE_ACK is received (local) or sent (peer).
// Two overlapping writes from different nodes that are in flight together are concurrent, and
// over the link's FIFO order both nodes see the same pairs as concurrent. For such a pair the
// write of the node whose name sorts LATER lands last on both nodes:
//   - the winner's write waits until the loser's write is on disk, then is written in full;
//   - the loser's write skips the bytes it shares with the winner's.
// Writes from the same node that overlap are applied in the order they started.
import type { Done, Extent, Volume, VolumeCapabilities, ZeroOptions } from '../volume/volume.js';
import type { VolumeMeta } from '../meta/volume-meta.js';
import { decodeWriteHeader, encodeWriteHeader, PeerMsg, WRITE_HEADER_SIZE, type FrameHeader } from './peer-protocol.js';

/** What the mirrored volume needs of the peer link. */
export interface PeerPort {
  readonly connected: boolean;
  send(type: PeerMsg, id: bigint, body?: Buffer): boolean;
}

interface InFlight {
  readonly id: bigint;
  readonly offset: number;
  readonly end: number;
  readonly origin: 'local' | 'peer';
  /** Set once this write's bytes are in the local file. */
  onDisk: boolean;
  readonly whenOnDisk: Array<() => void>;
}

interface LocalWrite {
  readonly entry: InFlight;
  diskDone: boolean;
  peerDone: boolean;
  error: Error | null;
  readonly done: Done;
}

export class MirroredVolume implements Volume {
  readonly size: number;
  readonly capabilities: VolumeCapabilities;
  private readonly inFlight: InFlight[] = [];
  private readonly localWrites = new Map<bigint, LocalWrite>();
  private readonly flushes = new Map<bigint, Done>();
  private nextId = 1n;
  /** True when this node's writes win overlaps (its name sorts after the peer's). */
  private readonly winsOverlaps: boolean;

  constructor(
    private readonly local: Volume,
    private readonly meta: VolumeMeta,
    private readonly peer: PeerPort,
    readonly volumeIndex: number,
    nodeName: string,
    peerName: string,
    private readonly grain: number,
  ) {
    this.size = local.size;
    // Trim and zero are not mirrored yet: not advertised until they are.
    this.capabilities = { ...local.capabilities, trim: false, zero: false, fastZero: false };
    this.winsOverlaps = nodeName > peerName;
  }

  read(buf: Buffer, offset: number, done: Done): void {
    this.local.read(buf, offset, done);
  }

  write(buf: Buffer, offset: number, fua: boolean, done: Done): void {
    const entry = this.track(offset, buf.length, 'local', this.nextId++);
    if (!this.peer.connected) return this.writeDegraded(entry, buf, fua, done);
    const w: LocalWrite = { entry, diskDone: false, peerDone: false, error: null, done };
    this.localWrites.set(entry.id, w);
    const header = encodeWriteHeader({ volume: this.volumeIndex, flags: fua ? 1 : 0, offset, digest: 0n });
    this.peer.send(PeerMsg.WRITE, entry.id, Buffer.concat([header, buf]));
    this.applyLocal(entry, buf, fua, (err) => {
      w.diskDone = true;
      w.error ??= err;
      this.maybeFinish(w);
    });
  }

  /** The peer is gone: the bits must be durable before the data is written and acknowledged. */
  private writeDegraded(entry: InFlight, buf: Buffer, fua: boolean, done: Done): void {
    const [first, count] = this.grains(entry.offset, buf.length);
    this.meta.markDirty(first, count, (err) => {
      if (err) {
        this.untrack(entry);
        return done(err);
      }
      this.applyLocal(entry, buf, fua, (e) => {
        this.untrack(entry);
        done(e);
      });
    });
  }

  flush(done: Done): void {
    if (!this.peer.connected) return this.local.flush(done);
    const id = this.nextId++;
    let pending = 2;
    let error: Error | null = null;
    const one = (err: Error | null) => {
      error ??= err;
      if (--pending === 0) done(error);
    };
    this.flushes.set(id, one);
    this.peer.send(PeerMsg.FLUSH, id);
    this.local.flush(one);
  }

  trim(offset: number, length: number, fua: boolean, done: Done): void {
    this.local.trim(offset, length, fua, done);
  }

  zero(offset: number, length: number, opts: ZeroOptions, done: Done): void {
    this.local.zero(offset, length, opts, done);
  }

  cache(offset: number, length: number, done: Done): void {
    this.local.cache(offset, length, done);
  }

  extents(offset: number, length: number, max: number, done: (err: Error | null, extents: Extent[]) => void): void {
    this.local.extents(offset, length, max, done);
  }

  close(): Promise<void> {
    return this.local.close();
  }

  /** Frames from the peer for this volume. */
  handleFrame(h: FrameHeader, body: Buffer): void {
    switch (h.type) {
      case PeerMsg.WRITE:
        return this.onPeerWrite(h.id, body);
      case PeerMsg.WRITE_ACK: {
        const w = this.localWrites.get(h.id);
        if (!w) return;
        w.peerDone = true;
        if (body.length >= 4 && body.readUInt32BE(0) !== 0) w.error ??= new Error(`peer failed the write with error ${body.readUInt32BE(0)}`);
        return this.maybeFinish(w);
      }
      case PeerMsg.FLUSH:
        return this.local.flush((err) => void this.peer.send(PeerMsg.FLUSH_ACK, h.id, status(err)));
      case PeerMsg.FLUSH_ACK: {
        const f = this.flushes.get(h.id);
        this.flushes.delete(h.id);
        return f?.(body.length >= 4 && body.readUInt32BE(0) !== 0 ? new Error('peer flush failed') : null);
      }
    }
  }

  /**
   * The link is gone: every write still waiting for the peer becomes a degraded write (its bits
   * are made durable, then it completes); flushes waiting for the peer complete locally.
   * (Peer writes being applied here finish on their own; their ACK has nowhere to go, and the
   * peer marks them dirty on its side.)
   */
  peerLost(): void {
    for (const w of [...this.localWrites.values()]) {
      if (w.peerDone) continue;
      const [first, count] = this.grains(w.entry.offset, w.entry.end - w.entry.offset);
      this.meta.markDirty(first, count, (err) => {
        w.error ??= err;
        w.peerDone = true;
        this.maybeFinish(w);
      });
    }
    for (const [id, f] of this.flushes) {
      this.flushes.delete(id);
      this.local.flush(f);
    }
  }

  private onPeerWrite(id: bigint, body: Buffer): void {
    const w = decodeWriteHeader(body);
    const data = body.subarray(WRITE_HEADER_SIZE);
    const entry = this.track(w.offset, data.length, 'peer', id);
    this.applyLocal(entry, data, (w.flags & 1) !== 0, (err) => {
      this.untrack(entry);
      this.peer.send(PeerMsg.WRITE_ACK, id, status(err));
    });
  }

  private maybeFinish(w: LocalWrite): void {
    if (!w.diskDone || !w.peerDone) return;
    this.localWrites.delete(w.entry.id);
    this.untrack(w.entry);
    w.done(w.error);
  }

  private track(offset: number, length: number, origin: 'local' | 'peer', id: bigint): InFlight {
    const entry: InFlight = { id, offset, end: offset + length, origin, onDisk: false, whenOnDisk: [] };
    this.inFlight.push(entry);
    return entry;
  }

  private untrack(entry: InFlight): void {
    const i = this.inFlight.indexOf(entry);
    if (i >= 0) this.inFlight.splice(i, 1);
  }

  /**
   * Writes `buf` for `entry` once every earlier overlapping write it must follow is on disk,
   * leaving out the bytes of concurrent writes it must not overwrite (see the file comment).
   */
  private applyLocal(entry: InFlight, buf: Buffer, fua: boolean, done: Done): void {
    const mustFollow: InFlight[] = [];
    const skip: InFlight[] = [];
    for (const other of this.inFlight) {
      if (other === entry) break; // only writes that started before this one
      if (other.end <= entry.offset || other.offset >= entry.end) continue;
      if (other.origin === entry.origin) mustFollow.push(other);
      else if (this.landsLast(entry)) mustFollow.push(other);
      else skip.push(other);
    }
    const write = (): void => {
      const pieces = subtract(entry.offset, entry.end, skip);
      let left = pieces.length;
      let error: Error | null = null;
      const finished = (): void => {
        entry.onDisk = true;
        for (const w of entry.whenOnDisk.splice(0)) w();
        done(error);
      };
      if (left === 0) return finished();
      for (const [from, to] of pieces) {
        this.local.write(buf.subarray(from - entry.offset, to - entry.offset), from, fua, (err) => {
          error ??= err;
          if (--left === 0) finished();
        });
      }
    };
    const waiting = mustFollow.filter((o) => !o.onDisk);
    let left = waiting.length;
    if (left === 0) return write();
    for (const o of waiting) o.whenOnDisk.push(() => --left === 0 && write());
  }

  /** Does `entry` win overlaps with concurrent writes of the other origin? */
  private landsLast(entry: InFlight): boolean {
    return entry.origin === 'local' ? this.winsOverlaps : !this.winsOverlaps;
  }

  private grains(offset: number, length: number): [number, number] {
    const first = Math.floor(offset / this.grain);
    return [first, Math.ceil((offset + length) / this.grain) - first];
  }
}

function status(err: Error | null): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(err ? 5 : 0); // EIO
  return b;
}

/** [from, to) minus the ranges of `cut`, as sorted pieces. */
function subtract(from: number, to: number, cut: readonly InFlight[]): Array<[number, number]> {
  let pieces: Array<[number, number]> = [[from, to]];
  for (const c of cut) {
    pieces = pieces.flatMap(([a, b]): Array<[number, number]> => {
      if (c.end <= a || c.offset >= b) return [[a, b]];
      const out: Array<[number, number]> = [];
      if (c.offset > a) out.push([a, c.offset]);
      if (c.end < b) out.push([c.end, b]);
      return out;
    });
  }
  return pieces;
}
