// The test-only `serve --test-faults FILE`: every volume of the process goes behind a
// FaultVolume, whose rules come from FILE, read at start and again on each SIGUSR2, so a test
// or a chaos drill can make one disk fail or slow down while the process runs. A file that
// cannot be used is logged and changes nothing; the process never stops over it.
import { readFileSync } from 'node:fs';
import type { Logger } from '../log.js';
import { FaultVolume } from './fault-volume.js';
import { FaultSpecError, parseFaultSpec, rulesFor, type FaultPlan } from './fault-spec.js';
import type { Volume } from './volume.js';

export class FaultFile {
  private readonly volumes = new Map<string, FaultVolume>();

  constructor(
    readonly path: string,
    private readonly log: Logger,
  ) {}

  /** Puts volume `name` behind a FaultVolume driven by the file (no rules until `start`). */
  readonly wrap = (name: string, volume: Volume): Volume => {
    const faulty = new FaultVolume(volume);
    this.volumes.set(name, faulty);
    return faulty;
  };

  /** Once every volume is wrapped: loads the file and reloads it on every SIGUSR2. */
  start(): void {
    this.log.warn({ file: this.path }, 'test-only fault injection is on (--test-faults): requests may be failed or delayed on purpose');
    this.load();
    process.on('SIGUSR2', () => this.load());
  }

  /** Reads the file and gives each volume its rules; a bad file leaves the old rules in force. */
  private load(): void {
    let plan: FaultPlan;
    try {
      plan = this.read();
    } catch (err) {
      this.log.error({ file: this.path, err: (err as Error).message }, 'fault rules not loaded; the previous rules stay in force');
      return;
    }
    const perVolume: Record<string, number> = {};
    for (const [name, v] of this.volumes) {
      const rules = rulesFor(plan, name);
      v.setRules(rules);
      perVolume[name] = rules.rules.length;
    }
    const rules = Object.values(plan).reduce((n, r) => n + r.rules.length, 0);
    this.log.info({ file: this.path, rules, volumes: perVolume }, 'fault rules loaded');
  }

  /** The plan in the file; none while the file does not exist. */
  private read(): FaultPlan {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw err;
    }
    const plan = parseFaultSpec(text, this.path);
    const unknown = Object.keys(plan).filter((n) => n !== '*' && !this.volumes.has(n));
    if (unknown.length > 0) throw new FaultSpecError(`${this.path} names volumes this process does not serve: ${unknown.join(', ')} (it serves ${[...this.volumes.keys()].join(', ')})`);
    return plan;
  }
}
