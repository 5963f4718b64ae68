// The cluster config: one JSON file, the same on every node, describing nodes, volumes and
// (later) the witness. Validated with zod so every error names the field it is about.
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { address, duration, issueLines, size } from './schema.js';
import { parseSize } from './units.js';

/**
 * Node and volume names: they become file names in the data dir (NAME.img, NAME.meta) and export
 * names, so only a safe set: no "/", no leading "." (no "..", no hidden files), at most 64.
 */
export const name = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'use 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit');

/** Volume sizes are whole 4 KiB grains (the dirty bitmap's). */
export const VOLUME_ALIGN = 4096;
/** Largest volume: 2^32 grains of the dirty bitmap (16 TiB). */
export const MAX_VOLUME_SIZE = 2 ** 32 * VOLUME_ALIGN;

/** Peer link timing. */
const linkSchema = z
  .strictObject({
    /** The peer counts as gone after this long without a frame. */
    timeout: duration.default(2000),
    /** PING interval; must leave room for a few beats inside the timeout. */
    heartbeat: duration.optional(),
    /**
     * A write or flush the peer leaves unanswered this long resets the link (it may answer PINGs
     * yet hang); so does a peer that reads nothing of what this node queues for it this long.
     */
    ackTimeout: duration.optional(),
  })
  .transform((l) => ({ timeoutMs: l.timeout, heartbeatMs: l.heartbeat ?? Math.max(50, l.timeout / 4), ackTimeoutMs: l.ackTimeout ?? 5 * l.timeout }))
  .refine((l) => l.heartbeatMs * 2 <= l.timeoutMs, { message: 'heartbeat must be at most half of timeout', path: ['heartbeat'] })
  .refine((l) => l.ackTimeoutMs >= l.timeoutMs, { message: 'ackTimeout must be at least timeout', path: ['ackTimeout'] });

/** Activity log: how much of each volume may have writes in flight (crash resync covers it). */
const activityLogSchema = z
  .strictObject({
    /** Size of one extent: a crash resyncs whole extents. */
    extent: size.default(4 * 1024 * 1024).refine((n) => n >= 64 * 1024 && (n & (n - 1)) === 0, 'must be a power of two of at least 64K'),
    /** Extents held at most; more means fewer log updates but more to check after a crash. */
    extents: z.number().int().min(1).max(1000).default(1000),
  })
  .prefault({});

const rate = z.union([z.string(), z.number().int().positive()]).transform((v, ctx): number => {
  if (v === 'unlimited') return Infinity;
  try {
    return typeof v === 'number' ? v : parseSize(v.replace(/\/s$/, ''));
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `${(err as Error).message} (a rate per second, e.g. 100M or 100M/s, or "unlimited")` });
    return z.NEVER;
  }
});

/** Pacing of resync and verify. */
const resyncSchema = z
  .strictObject({
    /** Never faster than this. */
    maxRate: rate.default(Infinity),
    /** While clients are doing I/O on the volume, no faster than this: their requests come first. */
    busyRate: rate.default(16 * 1024 * 1024),
  })
  .prefault({});

/** What a node without its peer does when the witness does not let it write alone. */
const quorumSchema = z
  .strictObject({
    /** `suspend`: hold writes (and, on a node the witness declared outdated, reads) up to `suspendTimeout`, then EIO; `io-error`: EIO at once. */
    onNoQuorum: z.enum(['suspend', 'io-error']).default('suspend'),
    suspendTimeout: duration.default(30_000),
  })
  .prefault({});

/** Split brain in a cluster without a witness: who gives up its changes. */
const splitBrainSchema = z
  .discriminatedUnion('policy', [
    z.strictObject({ policy: z.literal('manual') }),
    z.strictObject({ policy: z.literal('discard-least-changes') }),
    z.strictObject({ policy: z.literal('discard-younger') }),
    z.strictObject({ policy: z.literal('discard-node'), node: name }),
  ])
  .default({ policy: 'manual' });

/** Paths are relative to the config file's folder; the files are read (and checked) when the node starts. */
const nbdTlsSchema = z
  .strictObject({
    mode: z.enum(['off', 'on', 'require']).default('off'),
    certificates: z.string().min(1).optional(),
    verifyPeer: z.boolean().default(false),
    psk: z.string().min(1).optional(),
  })
  .prefault({});

/**
 * Thin pool (docs/CONFIG.md): with it every volume is a thin volume in one pool per node; the
 * volumes' sizes may add up to more than the pool (over-commit).
 */
const poolSchema = z.strictObject({
  /** Data capacity of each node's pool (per node: nodes.NAME.pool.size). Raised and reloaded (SIGHUP), the pool grows online. */
  size: size,
  /** Allocation unit, fixed when the pool is made. */
  unit: size.refine((n) => n >= 64 * 1024 && n <= 64 * 1024 * 1024 && (n & (n - 1)) === 0, 'must be a power of two from 64K to 64M').default(1024 * 1024),
  /** How far the pool can grow online (metadata room made at creation, 8 bytes per unit). Default 4 × size. */
  maxSize: size.optional(),
  /** A write needing a unit when none is free: ENOSPC at once (`error`), or held up to holdTimeout for space (`queue`). */
  onFull: z.enum(['error', 'queue']).default('error'),
  holdTimeout: duration.default(30_000),
  /** Percentages of the pool in use logged once when crossed (and exported as metrics). */
  thresholds: z.array(z.number().gt(0).max(100)).max(8).default([75, 90]),
});

/** Per node: where its pool is (default dataDir/pool.img; a file or a block device) and its size. */
const nodePoolSchema = z.strictObject({
  path: z.string().min(1).optional(),
  size: size.optional(),
});

const nodeSchema = z.strictObject({
  /** Where hosts attach over NBD. */
  nbd: address,
  /** Where the other node connects for mirroring. */
  peer: address,
  /** HTTP admin endpoint (status, metrics). */
  admin: address,
  /** Volume files and metadata of this node (relative to the config file's folder). */
  dataDir: z.string().min(1),
  /** NBD over TLS for the hosts attaching to this node (serve's --tls flags; docs/CONFIG.md). */
  tls: nbdTlsSchema,
  /** This node's pool, when the cluster has one: path and size overrides. */
  pool: nodePoolSchema.optional(),
});

/** Keys (files `nbd-mirror keygen` writes; relative to the config file's folder) and exposure. */
const securitySchema = z
  .strictObject({
    /** Bearer token for the admin endpoint's actions (POST /stop, /resolve, /verify). */
    adminToken: z.string().min(1).optional(),
    /**
     * The cluster's secret (the same file on both nodes): the peer link runs TLS-PSK keyed by it,
     * and it signs the nodes' requests to the witness.
     */
    clusterSecret: z.string().min(1).optional(),
    /**
     * Mutual x509 on the peer link instead of the secret's TLS-PSK: a folder with one folder per
     * node (`DIR/NODE/ca-cert.pem`, `server-cert.pem`, `server-key.pem`, what `keygen --ca` writes).
     */
    peerCertificates: z.string().min(1).optional(),
    /** Lets an admin endpoint listen on an address other machines reach (needs adminToken). */
    adminPublic: z.boolean().default(false),
  })
  .prefault({});

/**
 * Room kept at start for volumes created or grown online: every volume's dirty bitmap lives in
 * WASM memory, which is sized once (docs/ARCHITECTURE.md, hot-path rules). A restart sizes it
 * afresh for the volumes that exist then, plus this room again.
 */
const onlineSchema = z
  .strictObject({
    /** Volume bytes that can be added online (created, or grown) before a restart: 32 MiB of memory per 1T. */
    capacity: size.default(1024 ** 4),
    /** Volumes that can be created online before a restart (a HELLO lists every volume in at most 64 KiB: a pair holds about 200). */
    volumes: z.number().int().min(0).max(128).default(16),
  })
  .prefault({});

const volumeSchema = z.strictObject({
  size: size
    .refine((n) => n % VOLUME_ALIGN === 0, 'must be a multiple of 4096 bytes')
    .refine((n) => n > 0 && n <= MAX_VOLUME_SIZE, 'must be more than 0 and at most 16T'),
  description: z.string().max(1024).optional(),
  /** Every resync of this volume compares block digests first and copies only differing blocks. */
  checksumResync: z.boolean().default(false),
  /** `nbd-mirror attach` sends this volume's I/O to this node while it is UpToDate (default: the first node). */
  preferredNode: name.optional(),
});

/** The host-side endpoint (`nbd-mirror attach`): when a path counts as failed, how often nodes are asked. */
const attachSchema = z
  .strictObject({
    /** A request unanswered this long marks its path stalled: new requests wait for the fail-over rule. */
    ioTimeout: duration.default(5000),
    /** How often each node's admin status is read (the fail-over and fail-back decisions use it). */
    statusInterval: duration.default(250),
    /** How soon a lost path is dialed again. */
    reconnectInterval: duration.default(1000),
    /**
     * Credentials for nodes that serve NBD over TLS (`nodes.N.tls`), as libnbd and qemu take them:
     * a psktool file and the username to use, or a certificates directory (ca-cert.pem, and
     * client-cert.pem + client-key.pem for nodes that verify clients). Relative to the config file.
     */
    tls: z
      .strictObject({ psk: z.string().min(1).optional(), username: z.string().min(1).optional(), certificates: z.string().min(1).optional() })
      .refine((t) => (t.psk === undefined) !== (t.certificates === undefined), 'give "psk" (with "username") or "certificates", one of them')
      .optional(),
  })
  .prefault({});

export const clusterSchema = z
  .strictObject({
    /**
     * The cluster's identity (peer link handshake, volume metadata, witness grant). Default: the
     * two node names, sorted, joined by "+". Set it before the volumes are created.
     */
    name: name.optional(),
    nodes: z.record(name, nodeSchema).refine((n) => Object.keys(n).length === 2, 'a cluster has exactly two nodes'),
    /** Volumes that exist at start (more can be created online: src/replication/volume-ops.ts). */
    volumes: z.record(name, volumeSchema).default({}),
    online: onlineSchema,
    witness: address.optional(),
    pool: poolSchema.optional(),
    link: linkSchema.prefault({}),
    activityLog: activityLogSchema,
    resync: resyncSchema,
    quorum: quorumSchema,
    splitBrain: splitBrainSchema,
    security: securitySchema,
    attach: attachSchema,
  })
  .superRefine((c, ctx) => {
    for (const [node, n] of Object.entries(c.nodes)) {
      if (n.pool && !c.pool) ctx.addIssue({ code: 'custom', path: ['nodes', node, 'pool'], message: 'a node pool override needs the cluster\'s "pool" section' });
    }
    if (c.splitBrain.policy === 'discard-node' && !(c.splitBrain.node in c.nodes)) {
      ctx.addIssue({ code: 'custom', path: ['splitBrain', 'node'], message: `"${c.splitBrain.node}" is not a node of this cluster` });
    }
    for (const [volume, v] of Object.entries(c.volumes)) {
      if (v.preferredNode !== undefined && !(v.preferredNode in c.nodes)) {
        ctx.addIssue({ code: 'custom', path: ['volumes', volume, 'preferredNode'], message: `"${v.preferredNode}" is not a node of this cluster` });
      }
    }
    // GET /status and /metrics answer anyone who reaches the admin endpoint, and without a token
    // so do the actions: another machine must be let in on purpose.
    for (const [node, n] of Object.entries(c.nodes)) {
      if (!c.security.adminPublic && !isLoopback(n.admin.host)) {
        ctx.addIssue({ code: 'custom', path: ['nodes', node, 'admin'], message: `${n.admin.host} is not a loopback address: set "security": { "adminPublic": true, "adminToken": FILE } to serve the admin endpoint to other machines` });
      }
    }
    if (c.security.adminPublic && c.security.adminToken === undefined) {
      ctx.addIssue({ code: 'custom', path: ['security', 'adminPublic'], message: 'a public admin endpoint needs security.adminToken (nbd-mirror keygen writes one)' });
    }
    // Two services on one address collide — within a node always, across nodes only where the
    // address names one machine: two servers may each keep their admin (or NBD) endpoint on
    // their own loopback. Peer addresses are dialed by the other node, so they must differ.
    const seen = new Map<string, { node: string; field: string }>();
    for (const [node, n] of Object.entries(c.nodes)) {
      for (const key of ['nbd', 'peer', 'admin'] as const) {
        const where = `${n[key].host}:${n[key].port}`;
        const other = seen.get(where);
        const perMachine = key !== 'peer' && isLocalOnly(n[key].host);
        if (other && n[key].port !== 0 && (other.node === node || !perMachine)) {
          ctx.addIssue({ code: 'custom', path: ['nodes', node, key], message: `${where} is also used by ${other.field}` });
        }
        seen.set(where, { node, field: `nodes.${node}.${key}` });
      }
    }
  });

export type ClusterConfig = z.output<typeof clusterSchema>;

/** Loopback and wildcard hosts: the same text means a different endpoint on each machine. */
function isLocalOnly(host: string): boolean {
  return isLoopback(host) || host === '0.0.0.0' || host === '::';
}

/** Hosts only this machine reaches. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host.startsWith('127.') || host === '::1';
}

/** Thrown for an unreadable or invalid config; the message lists every problem with its field. */
export class ConfigError extends Error {
  readonly code = 'NBD_MIRROR_CONFIG';
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export function parseClusterConfig(json: unknown, source = 'config'): ClusterConfig {
  const result = clusterSchema.safeParse(json);
  if (result.success) return result.data;
  throw new ConfigError(`${source} is not a valid cluster config:\n${issueLines(result.error)}`);
}

export function loadClusterConfig(path: string): ClusterConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${path}: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${path} is not valid JSON: ${(err as Error).message}`);
  }
  return parseClusterConfig(json, path);
}
