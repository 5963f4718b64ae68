// Which external tools (real NBD clients) this machine has. A test that needs a missing
// tool is skipped loudly; with NBD_MIRROR_REQUIRE_TOOLS=1 (set by .ci/run) it fails instead.
import { execFileSync } from 'node:child_process';

const cache = new Map<string, boolean>();

export function hasTool(name: string): boolean {
  let found = cache.get(name);
  if (found === undefined) {
    try {
      execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore', env: toolEnv() });
      found = true;
    } catch {
      found = false;
    }
    cache.set(name, found);
  }
  return found;
}

export const toolsRequired = process.env.NBD_MIRROR_REQUIRE_TOOLS === '1';

/** Returns the tools from `names` that are missing; warns loudly, or throws when tools are mandatory. */
export function missingTools(...names: string[]): string[] {
  const missing = names.filter((n) => !hasTool(n));
  if (missing.length > 0) {
    const msg = `MISSING TOOLS: ${missing.join(', ')} (install: apt-get install libnbd-bin python3-libnbd qemu-utils fio nbdkit nbdfuse spin gcc gnutls-bin python3-pyfuse3)`;
    if (toolsRequired) throw new Error(msg);
    console.warn(`\n*** SKIPPING: ${msg} ***\n`);
  }
  return missing;
}

/** Environment for running real clients: /usr/bin first so nbdsh finds the system python3-libnbd. */
export function toolEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `/usr/bin:/usr/sbin:/bin:/sbin:${process.env.PATH ?? ''}` };
}
