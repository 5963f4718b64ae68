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
    claim: (brandNew: boolean) => call(() => state.claim({ cluster: 'a+b', node, brandNew })),
    release: (brandNew: boolean) => call(() => state.release({ cluster: 'a+b', node, brandNew })),
  } as unknown as WitnessClient;
}

function gate(node: string, state: WitnessState | null, reachable = { up: true }, onNoQuorum: NoQuorumPolicy = 'suspend', brandNew = false): QuorumGate {
  return new QuorumGate({ witness: state ? witnessFor(state, node, reachable) : undefined, onNoQuorum, suspendMs: 1000, retryMs: 100, log, brandNew: () => brandNew });
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
    expect(() => WitnessState.fromJSON({ 'a+b': { holder: 'a' } })).toThrow(); // a holder without since
    expect(() => WitnessState.fromJSON({ 'a+b': {} })).toThrow(); // neither hasData nor a grant
    expect(() => WitnessState.fromJSON({ 'a+b': { hasData: false } })).toThrow(); // a flag that never clears
  });

  it('remembers that a cluster holds data: a brand-new claimer is refused from then on, even the holder; a new cluster\'s first one is granted', () => {
    const w = new WitnessState();
    // A new cluster: nothing recorded, its first node is empty too and writes alone.
    expect(w.hasData('a+b')).toBe(false);
    expect(w.claim({ cluster: 'a+b', node: 'a', brandNew: true })).toMatchObject({ granted: true, holder: 'a' });
    expect(w.hasData('a+b')).toBe(true); // the grant: a may write alone from now on
    // a again with a new disk (replaced): refused although it holds the grant, which stays.
    const refused = w.claim({ cluster: 'a+b', node: 'a', brandNew: true });
    expect(refused).toMatchObject({ granted: false, holder: 'a' });
    expect(refused.reason).toMatch(/brand-new copy cannot serve alone: this cluster holds data on its peer/);
    expect(w.grants()).toEqual({ 'a+b': expect.objectContaining({ holder: 'a' }) });
    // Released (the pair in sync): the flag stays, a brand-new claimer is still refused, a copy with data is granted.
    expect(w.release({ cluster: 'a+b', node: 'a' })).toMatchObject({ holder: null });
    expect(w.claim({ cluster: 'a+b', node: 'b', brandNew: true })).toMatchObject({ granted: false, holder: null });
    expect(w.claim({ cluster: 'a+b', node: 'b', brandNew: false })).toMatchObject({ granted: true, holder: 'b' });
    // A release from a pair in sync records it as well, with no grant ever given; one from a new copy does not.
    expect(w.release({ cluster: 'c+d', node: 'c', brandNew: true })).toMatchObject({ holder: null });
    expect(w.hasData('c+d')).toBe(false);
    expect(w.release({ cluster: 'c+d', node: 'c' })).toMatchObject({ holder: null }); // no flag: a node from before it, not new
    expect(w.hasData('c+d')).toBe(true);
    expect(w.claim({ cluster: 'c+d', node: 'd', brandNew: true })).toMatchObject({ granted: false });
    expect(WitnessState.fromJSON(JSON.parse(JSON.stringify(w))).claim({ cluster: 'c+d', node: 'd', brandNew: true })).toMatchObject({ granted: false });
  });

  it('reads a state file written before hasData existed: each record is a grant, so that cluster holds data', () => {
    const old = WitnessState.fromJSON({ 'a+b': { holder: 'b', since: '2026-11-01T00:00:00.000Z' } });
    expect(old.hasData('a+b')).toBe(true);
    expect(old.claim({ cluster: 'a+b', node: 'b', brandNew: true })).toMatchObject({ granted: false, holder: 'b' });
    expect(old.toJSON()).toEqual({ 'a+b': { hasData: true, holder: 'b', since: '2026-11-01T00:00:00.000Z' } });
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
    expect(w.grants()).toEqual({});
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
    expect(w.toJSON()).toEqual({}); // not even recorded
  });

  it('a node restarted while holding the grant gives it back at its first in-sync (the grant lives at the witness)', async () => {
    const w = new WitnessState();
    expect(w.claim({ cluster: 'a+b', node: 'a' })).toMatchObject({ granted: true }); // before the restart
    const a = gate('a', w); // the restarted process: it knows nothing of that grant
    a.peerConnected();
    a.inSync();
    await settle();
    expect(w.grants()).toEqual({});
    // The peer's grant is not taken away by it.
    expect(w.claim({ cluster: 'a+b', node: 'b' })).toMatchObject({ granted: true });
    const a2 = gate('a', w);
    a2.peerConnected();
    a2.inSync();
    await settle();
    expect(w.grants()).toMatchObject({ 'a+b': { holder: 'b' } });
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

  it('a brand-new copy in a cluster that holds data is denied, with the reason, reads and writes held or failed; its peer connecting ends it', async () => {
    const w = new WitnessState();
    w.release({ cluster: 'a+b', node: 'a' }); // the pair was in sync once: the witness knows the cluster holds data
    const b = gate('b', w, { up: true }, 'io-error', true); // b restarted on a replaced, empty disk
    b.peerLost(false); // the link timeout at start-up: ask the witness
    await settle();
    expect(b.state).toBe('denied');
    expect(b.describe().reason).toMatch(/witness refused: a brand-new copy cannot serve alone: this cluster holds data on its peer/);
    expect(outcome(b).err).toMatchObject({ code: 'EIO' });
    expect(outcome(b, true).err).toMatchObject({ code: 'EIO' });
    expect(w.grants()).toEqual({}); // nothing taken
    b.peerConnected(); // the peer is back: the connection decides (a full sync to b)
    expect(outcome(b).err).toBeNull();
    b.stop();
    // A new cluster: the same brand-new node is granted.
    const first = gate('a', new WitnessState(), { up: true }, 'io-error', true);
    first.peerLost(false);
    await settle();
    expect(first.state).toBe('alone');
    first.stop();
  });

  it('stopping fails held requests', () => {
    const g = gate('a', new WitnessState(), { up: false });
    const o = outcome(g); // a new node with a witness starts without quorum
    g.stop();
    expect(o.err).toMatchObject({ code: 'EIO' });
  });
});
