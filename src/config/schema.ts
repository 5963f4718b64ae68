// zod pieces shared by the files we read (the cluster config, the test-only fault spec): what a
// person types ("1G", "2s", "HOST:PORT") goes through the one parser in units.ts, and a refusal
// lists every problem with the field it is about.
import { z } from 'zod';
import { parseDuration, parseHostPort, parseSize, type HostPort } from './units.js';

/** A zod transform from a parser that throws: its message becomes the issue's. */
function parsed<I, O>(parse: (v: I) => O): (v: I, ctx: z.RefinementCtx) => O {
  return (v, ctx) => {
    try {
      return parse(v);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  };
}

export const address = z.string().transform(parsed((text): HostPort => parseHostPort(text)));

/** A whole number of bytes of at least `min`, or a size with its unit ("512M"). */
function bytes(min: number) {
  return z.union([z.string(), z.number()]).transform(
    parsed((v) => {
      if (typeof v === 'string') return parseSize(v);
      if (!Number.isSafeInteger(v) || v < min) throw new Error(`${v} is not a whole number of bytes of at least ${min}`);
      return v;
    }),
  );
}

/** Bytes: a positive whole number, or a size with its unit ("512M"). */
export const size = bytes(1);

/** A position in bytes: a whole number from 0, or a size with its unit ("1M"). */
export const offset = bytes(0);

/** Milliseconds: a number, or a duration with its unit ("2s"). */
export const duration = z.union([z.string(), z.number()]).transform(parsed(parseDuration));

/** One line per problem, "  path.to.field: message", for an error a person reads. */
export function issueLines(error: z.ZodError): string {
  return error.issues.map((i) => `  ${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`).join('\n');
}
