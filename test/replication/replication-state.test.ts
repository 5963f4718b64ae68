// The declared states: only the table's transitions are taken, each logged once with its
// reason; the disk state is persisted (except Failed), with identity fields in the same write.
import { describe, expect, it } from 'vitest';
import { DiskState } from '../../src/meta/volume-meta.js';
import { DISK_TRANSITIONS, REPLICATION_TRANSITIONS, VolumeState } from '../../src/replication/replication-state.js';

function recorder() {
  const lines: Array<{ level: string; facts: Record<string, unknown>; msg: string }> = [];
  const at = (level: string) => (facts: Record<string, unknown>, msg: string) => void lines.push({ level, facts, msg });
  const log = { info: at('info'), warn: at('warn'), error: at('error') } as never;
  let persisted = DiskState.Inconsistent;
  const saves: unknown[] = [];
  const state = new VolumeState(
    log,
    () => persisted,
    (s, rest) => {
      persisted = s;
      saves.push({ s, ...rest });
    },
  );
  return { state, lines, saves };
}

describe('volume states', () => {
  it('every state is reachable and every named target is a state', () => {
    for (const table of [REPLICATION_TRANSITIONS, DISK_TRANSITIONS] as Array<Record<string, readonly string[]>>) {
      const names = Object.keys(table);
      for (const targets of Object.values(table)) for (const t of targets) expect(names).toContain(t);
      expect(new Set(Object.values(table).flat())).toEqual(new Set(names));
    }
  });

  it('takes the table\'s transitions, logs each once with its reason, refuses others', () => {
    const { state, lines } = recorder();
    state.setReplication('Connecting', 'started');
    state.setReplication('SyncTarget', 'resync');
    state.setReplication('SyncTarget', 'resync'); // no change: not logged
    expect(() => state.setReplication('Diverged', 'split brain')).toThrow(/SyncTarget → Diverged is not allowed/);
    expect(state.replication).toBe('SyncTarget');
    state.setReplication('Connecting', 'peer gone');
    expect(lines.map((l) => l.msg)).toEqual(['volume Connecting: started', 'volume SyncTarget: resync', 'volume Connecting: peer gone']);
    expect(lines[2]).toMatchObject({ level: 'warn', facts: { from: 'SyncTarget', to: 'Connecting', reason: 'peer gone' } });
  });

  it('persists disk states with their identity fields in one write; Failed is kept in memory and final', () => {
    const { state, saves, lines } = recorder();
    state.setDisk('UpToDate', 'resync finished', { trackingSince: 0 });
    expect(saves).toEqual([{ s: DiskState.UpToDate, trackingSince: 0 }]);
    state.setDisk('Failed', 'the local disk failed a client write');
    expect(state.disk).toBe('Failed');
    expect(saves).toHaveLength(1);
    expect(lines.at(-1)).toMatchObject({ level: 'error', msg: 'disk Failed: the local disk failed a client write' });
    expect(() => state.setDisk('UpToDate', 'resync finished')).toThrow(/Failed → UpToDate is not allowed/);
  });
});
