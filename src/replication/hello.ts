// HELLO: the first frame each node sends on a new peer link. It names the cluster, the node and
// every volume with its size and generation identifiers, so a wrong cluster, a wrong node or a
// size mismatch is refused before any data moves. Validated with zod like the config; the
// link refuses a HELLO body over MAX_HELLO (peer-frames.ts) before it is even buffered.
import { z } from 'zod';
import { ProtocolViolation } from '../protocol/errors.js';
import { PEER_VERSION } from './peer-protocol.js';
import { volumeOpSchema } from './volume-ops.js';

const hex64 = z.string().regex(/^[0-9a-f]{16}$/, 'a 64-bit generation id as 16 hex digits');

export const helloSchema = z.strictObject({
  version: z.number().int(),
  cluster: z.string().min(1).max(256),
  node: z.string().min(1).max(64),
  /**
   * Random per start of the sender's link (peer-link.ts): a connection whose boot id differs
   * from the live link's comes from a restarted process, one with the same boot id from the
   * process already linked.
   */
  boot: z.string().regex(/^[0-9a-f]{16}$/, 'a boot id as 16 hex digits'),
  volumes: z.array(
    z.strictObject({
      name: z.string().min(1).max(64),
      size: z.number().int().positive(),
      generation: z.strictObject({ current: hex64, bitmap: hex64, history: z.tuple([hex64, hex64]) }),
      state: z.enum(['UpToDate', 'Inconsistent', 'Outdated', 'Failed']),
      /** Does the sender's dirty bitmap have bits set? */
      dirty: z.boolean(),
      /** Does the sender want the next resync to compare block digests first (after a crash)? */
      checksum: z.boolean().default(false),
      /** Bytes the sender's dirty bitmap covers (split-brain policies compare them). */
      dirtyBytes: z.number().int().nonnegative().default(0),
      /** When the sender started writing without its peer (ms since 1970; 0: it did not). */
      trackingSince: z.number().int().nonnegative().default(0),
    }),
  ),
  /**
   * The volume change the sender asked for and has not settled (a link loss cut it short), sent
   * only when there is one (volume-ops.ts): a node that applied it answers such a HELLO with its
   * own, so the sender can see that and finish it.
   */
  unfinished: volumeOpSchema.optional(),
});

export type Hello = z.output<typeof helloSchema>;
/** What a node says in its HELLO; the link adds its boot id. */
export type HelloFields = Omit<Hello, 'boot'>;

export function encodeHello(h: Hello): Buffer {
  return Buffer.from(JSON.stringify(h), 'utf8');
}

/** Parses a HELLO body; anything malformed is a protocol violation naming the field. */
export function decodeHello(body: Buffer): Hello {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    throw new ProtocolViolation('peer HELLO is not JSON');
  }
  // The version first: a peer of another version fails the schema too, but this says why.
  const version = (json as { version?: unknown } | null)?.version;
  if (typeof version === 'number' && version !== PEER_VERSION) throw new ProtocolViolation(`peer speaks link version ${version}, we speak ${PEER_VERSION}`);
  const r = helloSchema.safeParse(json);
  if (!r.success) throw new ProtocolViolation(`peer HELLO invalid: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  if (r.data.version !== PEER_VERSION) throw new ProtocolViolation(`peer speaks link version ${r.data.version}, we speak ${PEER_VERSION}`);
  return r.data;
}

/**
 * Why two nodes must not link up, or undefined when they may: another cluster, the same node
 * name twice, or volumes that differ in name or size.
 */
export function helloMismatch(ours: HelloFields, theirs: HelloFields): string | undefined {
  if (theirs.cluster !== ours.cluster) return `peer belongs to cluster "${theirs.cluster}", we to "${ours.cluster}"`;
  if (theirs.node === ours.node) return `peer claims our own node name "${ours.node}"`;
  const mine = new Map(ours.volumes.map((v) => [v.name, v.size]));
  for (const v of theirs.volumes) {
    const size = mine.get(v.name);
    if (size === undefined) return `peer has volume "${v.name}", we do not`;
    if (size !== v.size) return `volume "${v.name}" is ${v.size} bytes on the peer, ${size} here`;
  }
  if (theirs.volumes.length !== ours.volumes.length) return 'peer lacks some of our volumes';
  // Volumes are matched by position from here on (their index on the wire): the same names in
  // the same order, so a repeated name cannot stand in for a missing one.
  const moved = theirs.volumes.findIndex((v, i) => v.name !== ours.volumes[i]!.name);
  if (moved >= 0) return `peer lists volume "${theirs.volumes[moved]!.name}" where we have "${ours.volumes[moved]!.name}"`;
  return undefined;
}
