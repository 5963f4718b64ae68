// The fail-over decisions of an attached volume, with two scripted paths and scripted node
// status: the re-send rule (a write that reached a failed node goes to the other only once that
// one writes alone), reads moving at once, a node reconnected taking its requests back, and a
// fail-back that drains and re-sends nothing; a volume grown online offered once both paths
// negotiated the new size.
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { AttachVolume, capabilitiesFrom, MAX_EIO_RETRIES } from '../../src/attach/attach-volume.js';
import type { Forwarded } from '../../src/attach/node-connection.js';
import type { NodePath, PathState } from '../../src/attach/path.js';
import { Cmd, NbdErr } from '../../src/protocol/constants.js';
import type { VolumeStatus } from '../../src/replication/cluster-node.js';
import { volumeStatus } from '../support/volume-status.js';

const SIZE = 1 << 20;

class FakePath {
  state: PathState = 'ready';
  reason = 'scripted';
  info = { size: SIZE, flags: 0 };
  generation = 1;
  sent: Forwarded[] = [];
  inFlightOps: Forwarded[] = [];
  dropped = 0;
  renewals = 0;
  constructor(
    readonly node: string,
    private readonly v: () => AttachVolume,
  ) {}
  get inFlight(): number {
    return this.inFlightOps.length;
  }
  writesInFlight(): boolean {
    return this.inFlightOps.some((o) => o.type === Cmd.WRITE || o.type === Cmd.TRIM || o.type === Cmd.WRITE_ZEROES);
  }
  send(op: Forwarded): void {
    this.sent.push(op);
    this.inFlightOps.push(op);
  }
  /** The node answers `op`. */
  answer(op: Forwarded, errno = 0): void {
    this.inFlightOps = this.inFlightOps.filter((o) => o !== op);
    op.errno = errno;
    this.v().replied(this as unknown as NodePath, op);
  }
  drop(reason: string): void {
    this.dropped++;
    this.lose(reason);
  }
  /** The connection is gone (closed by the node, or dropped). */
  lose(reason: string): void {
    const ops = this.inFlightOps;
    this.inFlightOps = [];
    this.state = 'down';
    this.v().lost(this as unknown as NodePath, reason, true, ops);
  }
  set(state: PathState): void {
    this.state = state;
    this.v().changed(this as unknown as NodePath);
  }
  /** A renewal asked; `renewed` is the new connection negotiating `size`. */
  renew(): void {
    this.renewals++;
  }
  renewed(size: number): void {
    this.info = { ...this.info, size };
    this.v().changed(this as unknown as NodePath);
  }
  checkStall(): void {}
  stop(): void {}
}

const healthy = volumeStatus({ size: SIZE });
const alone: VolumeStatus = { ...healthy, connection: 'Connecting', replication: 'Connecting', quorum: 'alone', outOfSyncBytes: 4096 };

function setup() {
  const status: Record<string, VolumeStatus | undefined> = { a: healthy, b: healthy };
  // eslint-disable-next-line prefer-const
  let v: AttachVolume;
  const a = new FakePath('a', () => v);
  const b = new FakePath('b', () => v);
  const offered: number[] = [];
  v = new AttachVolume('vol0', 'a', (n) => status[n], pino({ level: 'silent' }), 0, (x) => offered.push(x.size));
  v.attachPaths([a, b] as unknown as NodePath[]);
  v.describe(SIZE, capabilitiesFrom(0));
  const results: Array<[string, Error | null]> = [];
  const write = (tag: string) => v.write(Buffer.alloc(4096), 0, false, (e) => results.push([tag, e]));
  const read = (tag: string) => v.read(Buffer.alloc(4096), 0, (e) => results.push([tag, e]));
  return { v, a, b, status, results, write, read, offered };
}

describe('AttachVolume', () => {
  it('starts on the preferred node', () => {
    const { v, a, write } = setup();
    expect(v.status().active).toBe('a');
    write('w1');
    expect(a.sent.length).toBe(1);
  });

  it('holds a write that reached a hung node until the other node writes alone, then sends it there', () => {
    const { v, a, b, status, results, write, read } = setup();
    write('w1');
    read('r1');
    a.set('stalled');
    expect(v.status().mode).toBe('failing-over');
    write('w2'); // new requests wait too
    v.evaluate();
    expect(b.sent).toEqual([]); // b still mirrors to a: a copy sent there could be overtaken by a's old one
    status.b = alone;
    v.evaluate();
    expect(a.dropped).toBe(1);
    expect(b.sent.map((o) => o.seq)).toEqual([0, 1, 2]); // arrival order
    expect(v.status()).toMatchObject({ mode: 'active', active: 'b', resentTotal: 2, failovers: 1 });
    for (const op of [...b.inFlightOps]) b.answer(op);
    expect(results.map(([t, e]) => [t, e])).toEqual([
      ['w1', null],
      ['r1', null],
      ['w2', null],
    ]);
    expect(v.status().lastStall).toMatchObject({ kind: 'fail-over', from: 'a', to: 'b', resent: 2 });
  });

  it('moves reads of a hung node to the other at once: nothing it holds changes data', () => {
    const { v, a, b, read } = setup();
    read('r1');
    a.set('stalled');
    expect(v.status().active).toBe('b');
    expect(b.sent.length).toBe(1);
  });

  it('the stalled node answering again ends the pause on the same connection', () => {
    const { v, a, b, write } = setup();
    write('w1');
    a.set('stalled');
    write('w2');
    a.answer(a.inFlightOps[0]!);
    a.set('ready');
    expect(v.status()).toMatchObject({ mode: 'active', active: 'a', resentTotal: 0 });
    expect(a.sent.length).toBe(2);
    expect(b.sent).toEqual([]);
  });

  it('a node that closed its connection gets its writes back on a new connection when the other has not taken over', () => {
    const { v, a, b, write } = setup();
    write('w1');
    a.lose('connection closed by the node');
    expect(v.status().mode).toBe('failing-over');
    a.state = 'ready'; // reconnected: a new connection
    a.generation++;
    v.evaluate();
    expect(v.status()).toMatchObject({ mode: 'active', active: 'a', resentTotal: 1 });
    expect(a.sent.length).toBe(2);
    expect(b.sent).toEqual([]);
  });

  it('a node shutting down (ESHUTDOWN) hands its refused request to the other node at once', () => {
    const { v, a, b, results, write } = setup();
    write('w1');
    a.answer(a.inFlightOps[0]!, NbdErr.ESHUTDOWN);
    expect(v.status().active).toBe('b');
    expect(b.sent.length).toBe(1);
    b.answer(b.inFlightOps[0]!);
    expect(results).toEqual([['w1', null]]);
  });

  it('fails back to the preferred node once it is in sync: the old path drains, nothing is re-sent', () => {
    const { v, a, b, status, write } = setup();
    status.b = alone;
    a.lose('killed');
    expect(v.status().active).toBe('b');
    status.a = undefined; // a is down: no status
    write('w1');
    a.state = 'ready';
    status.a = healthy;
    status.b = healthy;
    v.evaluate();
    expect(v.status().mode).toBe('draining');
    write('w2'); // held while b drains
    expect(a.sent).toEqual([]);
    b.answer(b.inFlightOps[0]!);
    expect(v.status()).toMatchObject({ mode: 'active', active: 'a', failbacks: 1, resentTotal: 0 });
    expect(a.sent.length).toBe(1);
  });

  it('a write a node failed with EIO (it lost quorum) goes to the other node once that one writes alone', () => {
    const { v, a, b, status, results, write } = setup();
    write('w1');
    status.a = { ...healthy, connection: 'Connecting', quorum: 'denied' };
    a.answer(a.inFlightOps[0]!, NbdErr.EIO);
    expect(results).toEqual([]); // held, not failed
    expect(v.status().mode).toBe('failing-over');
    expect(b.sent).toEqual([]); // it may be on a's copy: b only once it writes alone
    status.b = alone;
    v.evaluate();
    expect(b.sent.length).toBe(1);
    b.answer(b.inFlightOps[0]!);
    expect(results).toEqual([['w1', null]]);
  });

  it('a request that keeps failing with EIO reaches the client after a few tries', () => {
    const { a, results, read } = setup();
    read('r1');
    for (let i = 0; i < MAX_EIO_RETRIES + 1 && a.inFlightOps.length > 0; i++) a.answer(a.inFlightOps[0]!, NbdErr.EIO);
    expect(a.sent.length).toBe(MAX_EIO_RETRIES + 1);
    expect(results.map(([t, e]) => [t, (e as { code?: string } | null)?.code])).toEqual([['r1', 'EIO']]);
  });

  it('a volume grown online: both paths renewed, the new size offered only once both negotiated it, no mode change', () => {
    const { v, a, b, status, write, offered } = setup();
    write('w1');
    status.a = { ...healthy, size: 2 * SIZE };
    v.evaluate();
    expect([a.renewals, b.renewals]).toEqual([1, 0]); // b's node does not say so yet
    status.b = { ...healthy, size: 2 * SIZE };
    v.evaluate();
    expect(b.renewals).toBe(1);
    a.renewed(2 * SIZE);
    expect(v.status().size).toBe(SIZE); // b's connection still has the old end: a fail-over there would refuse beyond it
    b.renewed(2 * SIZE);
    expect(v.status()).toMatchObject({ size: 2 * SIZE, mode: 'active', active: 'a', held: 0, resentTotal: 0 });
    expect(offered).toEqual([2 * SIZE]);
    v.evaluate();
    expect(offered).toEqual([2 * SIZE]); // once
  });

  it('a path whose node serves less than offered is not used', () => {
    const { v, a, status } = setup();
    status.b = alone;
    a.info = { size: SIZE / 2, flags: 0 };
    a.lose('killed');
    a.set('ready');
    expect(v.status()).toMatchObject({ active: 'b', size: SIZE });
    status.a = healthy;
    status.b = healthy;
    v.evaluate();
    expect(v.status().active).toBe('b'); // no fail-back to a node that would refuse the end of the volume
  });
});

