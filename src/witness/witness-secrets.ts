// `nbd-mirror witness --secrets DIR`: one file per cluster the witness serves, named
// `<cluster id>.secret` (the cluster's `name`, or its node names sorted and joined by "+"),
// holding that cluster's secret (a copy of the nodes' `security.clusterSecret` file).
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { readKeyFile } from '../security/key-file.js';

const SUFFIX = '.secret';

export function loadWitnessSecrets(dir: string): Map<string, Buffer> {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    throw new Error(`cannot read the witness secrets folder ${dir}: ${(err as Error).message}`);
  }
  const secrets = new Map<string, Buffer>();
  for (const name of names.filter((n) => n.endsWith(SUFFIX) && n.length > SUFFIX.length).sort()) {
    secrets.set(name.slice(0, -SUFFIX.length), readKeyFile(join(dir, name), 'witness secret'));
  }
  // Such a witness would refuse every node: surely not what was meant.
  if (secrets.size === 0) throw new Error(`no CLUSTER${SUFFIX} files in ${dir}: copy each cluster's security.clusterSecret file there as <cluster id>${SUFFIX}`);
  return secrets;
}
