// The quorum gate: who may write without the peer, and what happens to writes that may not.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createLogger } from '../../src/log.js';
import { QuorumGate, type NoQuorumPolicy } from '../../src/replication/quorum.js';
import type { WitnessClient } from '../../src/witness/witness-client.js';
import { WitnessState, type WitnessAnswer } from '../../src/witness/witness-server.js';

const log = createLogger('silent');

/** Two gates sharing one in-memory witness that can be made unreachable. */
function witnessFor(state: WitnessState, node: string, reachable: { up: boolean }): WitnessClient {
  const call = (answer: () => WitnessAnswer) => (reachable.up ? Promise.resolve(answer()) : Promise.reject(new Error('connect ECONNREFUSED')));
  return {
    claim: () => call(() => state.claim({ cluster: 'a+b', node })),
    release: () => call(() => state.release({ cluster: 'a+b', node })),
  } as unknown as WitnessClient;
}

function gate(node: string, state: WitnessState | null, reachable = { up: true }, onNoQuorum: NoQuorumPolicy = 'suspend'): QuorumGate {
  return new QuorumGate({ witness: state ? witnessFor(state, node, reachable) : undefined, onNoQuorum, suspendMs: 1000, retryMs: 100, log });
}

/** Settles pending promise callbacks (the fake witness answers in microtasks). */
const settle = () => new Promise((r) => setImmediate(r));

function outcome(g: QuorumGate, read = false): { err: Error | null | undefined } {
  const o: { err: Error | null | undefined } = { err: undefined };
  (read ? g.whenReadable : g.whenWritable).call(g, (err) => (o.err = err));
  return o;
}

describe('witness state', () => {
  it('gives the grant to one node per cluster until it is released by its holder', () => {
    const w = new WitnessState();
    expect(w.claim({ cluster: 'a+b', node: 'a' })).toMatchObject({ granted: true, holder: 'a' });
    expect(w.claim({ cluster: 'a+b', node: 'a' })).toMatchObject({ granted: true, holder: 'a' }); // asking again is harmless
    expect(w.claim({ cluster: 'a+b', node: 'b' })).toMatchObject({ granted: false, holder: 'a' });
    expect(w.claim({ cluster: 'x+y', node: 'y' })).toMatchObject({ granted: true, holder: 'y' }); // clusters are independent
    expect(w.release({ cluster: 'a+b', node: 'b' })).toMatchObject({ granted: false, holder: 'a' }); // only the holder releases
    expect(w.release({ cluster: 'a+b', node: 'a' })).toMatchObject({ holder: null });
    expect(w.claim({ cluster: 'a+b', node: 'b' })).toMatchObject({ granted: true, holder: 'b' });
  });

  it('survives a round trip through its state file format and refuses a damaged one', () => {
    const w = new WitnessState();
    w.claim({ cluster: 'a+b', node: 'b' }, new Date('2026-11-29T10:00:00Z'));
    const again = WitnessState.fromJSON(JSON.parse(JSON.stringify(w)));
    expect(again.claim({ cluster: 'a+b', node: 'a' })).toMatchObject({ granted: false, holder: 'b' });
    expect(() => WitnessState.fromJSON({ 'a+b': { holder: 3 } })).toThrow();
  });
});

describe('quorum gate', () => {
  afterEach(() => vi.useRealTimers());

  it('without a witness: a node that loses its peer writes alone (split brain stays possible, and detected)', () => {
    const g = gate('a', null);
    expect(g.writable).toBe(true);
    g.peerConnected();
    g.peerLost(false);
    expect(g.state).toBe('alone');
    expect(outcome(g).err).toBeNull();
  });

  it('with a witness: after a cut link exactly one node writes; the other holds writes and reads', async () => {
    const w = new WitnessState();
    const [a, b] = [gate('a', w), gate('b', w)];
    for (const g of [a, b]) g.peerConnected();
    a.peerLost(false);
    b.peerLost(false);
    expect(a.state).toBe('claiming');
    const held = outcome(a); // a write while the witness is asked waits for the answer
    await settle();
    expect(a.state).toBe('alone');
    expect(held.err).toBeNull();
    expect(b.state).toBe('denied');
    const [bw, br] = [outcome(b), outcome(b, true)];
    expect(bw.err).toBeUndefined();
    expect(br.err).toBeUndefined();
    // The link heals: b's held requests go on (mirrored now); once in sync, a gives the grant back.
    b.peerConnected();
    expect(bw.err).toBeNull();
    expect(br.err).toBeNull();
    a.peerConnected();
    a.inSync();
    await settle();
    expect(a.grantHeld).toBe(false);
    expect(w.toJSON()).toEqual({});
    a.stop();
    b.stop();
  });

  it('a stopping node does not claim the grant when its own link goes down', async () => {
    const w = new WitnessState();
    const b = gate('b', w);
    b.peerConnected();
    b.stop();
    b.peerLost(false); // its link.stop() after the quorum's
    await settle();
    expect(w.toJSON()).toEqual({});
  });

  it('a node restarted while holding the grant gives it back at its first in-sync (the grant lives at the witness)', async () => {
    const w = new WitnessState();
    expect(w.claim({ cluster: 'a+b', node: 'a' })).toMatchObject({ granted: true }); // before the restart
    const a = gate('a', w); // the restarted process: it knows nothing of that grant
    a.peerConnected();
    a.inSync();
    await settle();
    expect(w.toJSON()).toEqual({});
    // The peer's grant is not taken away by it.
    expect(w.claim({ cluster: 'a+b', node: 'b' })).toMatchObject({ granted: true });
    const a2 = gate('a', w);
    a2.peerConnected();
    a2.inSync();
    await settle();
    expect(w.toJSON()).toMatchObject({ 'a+b': { holder: 'b' } });
    a.stop();
    a2.stop();
  });

  it('neither peer nor witness: suspend holds writes (reads go on), then fails them with EIO', async () => {
    vi.useFakeTimers();
    const reachable = { up: false };
    const g = gate('a', new WitnessState(), reachable);
    g.peerConnected();
    g.peerLost(false);
    await vi.advanceTimersByTimeAsync(0);
    expect(g.state).toBe('no-quorum');
    expect(outcome(g, true).err).toBeNull();
    const first = outcome(g);
    await vi.advanceTimersByTimeAsync(900);
    expect(first.err).toBeUndefined();
    await vi.advanceTimersByTimeAsync(200);
    expect(first.err).toMatchObject({ code: 'EIO' });
    // A write held when the witness comes back goes on.
    const second = outcome(g);
    reachable.up = true;
    await vi.advanceTimersByTimeAsync(150); // the next retry reaches the witness
    expect(g.state).toBe('alone');
    expect(second.err).toBeNull();
    g.stop();
  });

  it('neither peer nor witness with io-error: writes fail at once, reads go on', async () => {
    const g = gate('a', new WitnessState(), { up: false }, 'io-error');
    g.peerConnected();
    g.peerLost(false);
    await settle();
    expect(g.state).toBe('no-quorum');
    expect(outcome(g).err).toMatchObject({ code: 'EIO' });
    expect(outcome(g, true).err).toBeNull();
    g.stop();
  });

  it('graceful leave: the survivor writes alone without the witness, and takes the grant if it can', async () => {
    const w = new WitnessState();
    const g = gate('a', w, { up: false });
    g.peerConnected();
    g.peerLost(true);
    expect(g.state).toBe('alone');
    expect(outcome(g).err).toBeNull();
    await settle();
    expect(g.state).toBe('alone'); // an unreachable witness changes nothing
    const h = gate('a', w);
    h.peerConnected();
    h.peerLost(true);
    await settle();
    expect(w.claim({ cluster: 'a+b', node: 'b' })).toMatchObject({ granted: false, holder: 'a' }); // the leaver cannot write alone later
    g.stop();
    h.stop();
  });

  it('a node that may hold an old copy serves no reads: just started, or refused, even after losing the witness', async () => {
    const reachable = { up: false };
    const w = new WitnessState();
    w.claim({ cluster: 'a+b', node: 'b' }); // b wrote alone while a was down
    const a = gate('a', w, reachable);
    const read = outcome(a, true);
    expect(read.err).toBeUndefined(); // started, has seen neither peer nor witness
    a.peerLost(false); // the link timeout at start-up: ask the witness
    await settle();
    expect(a.state).toBe('no-quorum');
    expect(read.err).toBeUndefined();
    reachable.up = true;
    await new Promise((r) => setTimeout(r, 150)); // the next retry reaches the witness
    expect(a.state).toBe('denied');
    reachable.up = false;
    await new Promise((r) => setTimeout(r, 150));
    expect(a.state).toBe('no-quorum');
    expect(outcome(a, true).err).toBeUndefined(); // still held: refused once, its copy is old
    a.peerConnected();
    expect(read.err).toBeNull();
    a.stop();
  });

  it('stopping fails held requests', () => {
    const g = gate('a', new WitnessState(), { up: false });
    const o = outcome(g); // a new node with a witness starts without quorum
    g.stop();
    expect(o.err).toMatchObject({ code: 'EIO' });
  });
});
