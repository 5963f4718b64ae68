// The fault spec: which requests a FaultVolume fails or slows, as JSON (the file of the
// test-only `serve --test-faults FILE`). Checked with zod, so a bad spec is refused with every
// problem and its field. Either one rule set for every volume, or rule sets by volume name
// ("*" for the volumes not named):
//   {"seed": 1, "rules": [{"op": "write", "errno": "EIO", "offset": 0, "length": "1M", "count": 3}]}
//   {"volumes": {"vol0": {"rules": [{"op": "flush", "delayMs": 200}]}, "*": {"rules": []}}}
import { z } from 'zod';
import { issueLines, offset, size } from '../config/schema.js';
import { errnoNumber, type FaultRules } from './fault-volume.js';

const ruleSchema = z
  .strictObject({
    op: z.enum(['read', 'write', 'trim', 'zero', 'flush', 'any-write']),
    errno: z
      .string()
      .refine((n) => errnoNumber(n) !== undefined, { error: (iss) => `"${String(iss.input)}" is not an errno name of this system (examples: EIO, ENOSPC, EROFS)` })
      .optional(),
    offset: offset.optional(),
    length: size.optional(),
    rate: z.number().min(0).max(1).optional(),
    after: z.number().int().nonnegative().optional(),
    count: z.number().int().positive().optional(),
    // Bounded: a test's slow disk, not a hung one.
    delayMs: z.number().positive().max(600_000).optional(),
  })
  .refine((r) => r.errno !== undefined || r.delayMs !== undefined, 'give errno (to fail), delayMs (to slow down), or both')
  .refine((r) => r.op !== 'flush' || (r.offset === undefined && r.length === undefined), { message: 'a flush has no range: drop offset and length', path: ['offset'] });

const rulesSchema = z.strictObject({
  seed: z.number().int().min(0).max(2 ** 32 - 1).default(0),
  rules: z.array(ruleSchema).max(1000),
});

const byVolumeSchema = z.strictObject({ volumes: z.record(z.string().min(1), rulesSchema) });

/** Rule sets by volume name; "*" holds the rules of every volume not named. */
export type FaultPlan = Readonly<Record<string, FaultRules>>;

/** Thrown for a spec that cannot be used; the message lists every problem with its field. */
export class FaultSpecError extends Error {
  readonly code = 'NBD_MIRROR_FAULT_SPEC';
  constructor(message: string) {
    super(message);
    this.name = 'FaultSpecError';
  }
}

/** Parses the JSON text of a spec (from `source`, named in errors). */
export function parseFaultSpec(text: string, source = 'fault spec'): FaultPlan {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new FaultSpecError(`${source} is not valid JSON: ${(err as Error).message}`);
  }
  // The key decides the form, so an error speaks of the form the writer meant.
  const byVolume = typeof json === 'object' && json !== null && 'volumes' in json;
  const result = byVolume ? byVolumeSchema.safeParse(json) : rulesSchema.safeParse(json);
  if (!result.success) throw new FaultSpecError(`${source} is not a valid fault spec:\n${issueLines(result.error)}`);
  return 'volumes' in result.data ? result.data.volumes : { '*': result.data };
}

/** The rules of volume `name` under a plan: its own set, else the "*" set, else none. */
export function rulesFor(plan: FaultPlan, name: string): FaultRules {
  return plan[name] ?? plan['*'] ?? { rules: [] };
}
