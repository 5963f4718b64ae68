// A node's record of the volumes changed online (`nbd-mirror volume create|resize|delete`):
// DATADIR/volumes.json, rewritten whole after each change, atomically and durably (durable.ts).
// It holds the node's whole volume set as of its last change, plus the names of config volumes
// deleted online. At start the two sources combine (volumesAtStart): the config's volumes, less
// those deleted online, plus the file's; where both name a volume, the file's size wins (it
// records a later, explicit resize). A node that never had an online change has no file and
// starts from the config alone, as before. It also holds the change this node asked its peer
// for and has not settled yet (`unfinished`, volume-ops.ts), written before the change is sent.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { replaceFileDurably } from '../durable.js';
import { volumeOpSchema } from '../replication/volume-ops.js';
import { MAX_VOLUME_SIZE, name, VOLUME_ALIGN } from './cluster.js';

export const VOLUMES_FILE = 'volumes.json';

const entrySchema = z.strictObject({
  size: z.number().int().positive().max(MAX_VOLUME_SIZE).refine((n) => n % VOLUME_ALIGN === 0, 'must be a multiple of 4096'),
  checksumResync: z.boolean().default(false),
});

const fileSchema = z.strictObject({
  version: z.literal(1),
  volumes: z.record(name, entrySchema),
  /** Config volumes deleted online: not opened again while the config still lists them. */
  deleted: z.array(name).default([]),
  /**
   * A change this node sent its peer whose outcome it has not learnt yet (the link was lost or
   * the answer late): finished or dropped at the next link-up (volume-ops.ts).
   */
  unfinished: volumeOpSchema.optional(),
});

export type VolumeEntry = z.output<typeof entrySchema>;
export type VolumesFile = z.output<typeof fileSchema>;

export function volumesFilePath(dataDir: string): string {
  return join(dataDir, VOLUMES_FILE);
}

/** The file, or undefined when there is none; a damaged file stops the node (it would forget volumes). */
export function readVolumesFile(dataDir: string): VolumesFile | undefined {
  const path = volumesFilePath(dataDir);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`${path} is damaged (${(err as Error).message}); refusing to start rather than forget volumes created online`);
  }
  const r = fileSchema.safeParse(json);
  if (!r.success) throw new Error(`${path} is not a volumes file: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return r.data;
}

export function writeVolumesFile(dataDir: string, f: VolumesFile): void {
  const sorted: VolumesFile = {
    version: 1,
    volumes: Object.fromEntries(Object.entries(f.volumes).sort(([a], [b]) => (a < b ? -1 : 1))),
    deleted: [...new Set(f.deleted)].sort(),
    ...(f.unfinished && { unfinished: f.unfinished }),
  };
  replaceFileDurably(volumesFilePath(dataDir), `${JSON.stringify(sorted, null, 2)}\n`);
}

/** What the two sources say about one name that an operator should hear about (logged at start). */
export interface StartNote {
  volume: string;
  note: string;
}

/** The volumes a node opens at start, from its config and its volumes file (see the head comment). */
export function volumesAtStart(config: Readonly<Record<string, VolumeEntry>>, file: VolumesFile | undefined): { volumes: Map<string, VolumeEntry>; notes: StartNote[] } {
  const volumes = new Map<string, VolumeEntry>();
  const notes: StartNote[] = [];
  const deleted = new Set(file?.deleted ?? []);
  for (const [v, entry] of Object.entries(config)) {
    if (deleted.has(v)) {
      notes.push({ volume: v, note: 'in the config but deleted online (volumes.json): not opened; remove it from the config' });
      continue;
    }
    const online = file?.volumes[v];
    if (online && online.size !== entry.size) notes.push({ volume: v, note: `the config says ${entry.size} bytes, it was resized online to ${online.size}: the online size is used` });
    volumes.set(v, { size: online?.size ?? entry.size, checksumResync: entry.checksumResync });
  }
  for (const [v, entry] of Object.entries(file?.volumes ?? {})) if (!volumes.has(v) && !deleted.has(v)) volumes.set(v, entry);
  return { volumes: new Map([...volumes].sort(([a], [b]) => (a < b ? -1 : 1))), notes };
}
