#!/usr/bin/env node
// Command-line entry: parses arguments and calls into the modules; nothing below imports this.
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger, LOG_LEVELS } from './log.js';
import { ExportRegistry } from './server/exports.js';
import { Hotpath } from './hotpath/index.js';
import { NbdServer, SERVER_INFLIGHT_BYTES, type ListenAddress } from './server/server.js';
import { formatSize, parseHostPort, parseSize } from './config/units.js';
import { FileVolume, type IoMode } from './volume/file-volume.js';

interface ExportArg {
  readonly name: string;
  readonly path: string;
}

/** Wraps a parser so its errors become commander's "invalid argument" messages. */
function argParser<T>(parse: (v: string, previous: T) => T): (v: string, previous: T) => T {
  return (v, previous) => {
    try {
      return parse(v, previous);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}

function parseExport(text: string, previous: ExportArg[] = []): ExportArg[] {
  const eq = text.indexOf('=');
  const name = text.slice(0, eq);
  const path = text.slice(eq + 1);
  if (eq <= 0 || !path) throw new Error(`"${text}" is not NAME=PATH (example: disk=data/disk.img)`);
  return [...previous, { name, path }];
}

async function serve(opts: {
  listen: ListenAddress;
  export: ExportArg[];
  size?: number;
  readOnly: boolean;
  logLevel: (typeof LOG_LEVELS)[number];
  io: IoMode;
}): Promise<void> {
  const log = createLogger(opts.logLevel);
  const registry = new ExportRegistry();
  for (const e of opts.export) {
    const path = resolve(e.path);
    if (opts.size !== undefined) mkdirSync(dirname(path), { recursive: true });
    const volume = FileVolume.open(path, { createSize: opts.size, readOnly: opts.readOnly, io: opts.io });
    if (opts.size !== undefined && volume.size !== opts.size) {
      log.warn({ export: e.name, path, size: volume.size, requested: opts.size }, 'file exists with another size; serving it as it is');
    }
    registry.add(e.name, volume, `nbd-mirror export ${e.name} (${formatSize(volume.size)})`);
    log.info({ export: e.name, path, size: volume.size, readOnly: opts.readOnly, io: opts.io }, 'export ready');
  }
  // WASM memory is sized here, once: room for every request in flight (the server budget) plus
  // the partly received payload of each connection.
  const hot = Hotpath.create({ slotArenaBytes: 2 * SERVER_INFLIGHT_BYTES });
  const server = new NbdServer(registry, hot.slots, log);
  const addr = await server.listen(opts.listen);
  log.info({ address: addr.host, port: addr.port }, 'listening');
  printAttachHelp(addr, registry);

  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stop requested');
    server.shutdown().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

/** Tells a person how to attach (stderr, so stdout stays JSON logs). */
function printAttachHelp(addr: ListenAddress, registry: ExportRegistry): void {
  const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
  const lines = [''];
  for (const e of registry.list()) {
    const uri = `nbd://${host}:${addr.port}/${e.name}`;
    lines.push(
      `nbd-mirror is serving "${e.name}" (${formatSize(e.size)}) on ${host}:${addr.port}. Attach with:`,
      `  nbdinfo ${uri}`,
      `  sudo nbd-client ${addr.host} ${addr.port} /dev/nbd0 -N ${e.name}`,
      `  qemu-system-x86_64 -drive file=${uri},format=raw,if=virtio ...`,
      `  qemu-io -f raw ${uri}`,
      '',
    );
  }
  lines.push('Stop with Ctrl-C (SIGINT) or SIGTERM: requests in flight finish and data is flushed.', '');
  process.stderr.write(lines.join('\n'));
}

export function buildProgram(): Command {
  const program = new Command()
    .name('nbd-mirror')
    .description('Highly available, synchronously mirrored block storage served over NBD')
    .showHelpAfterError();

  program
    .command('serve')
    .description('serve files as NBD exports')
    .requiredOption('--listen <host:port>', 'address to listen on (port 0 picks a free one)', argParser(parseHostPort))
    .requiredOption('--export <name=path>', 'export a file under a name (repeatable)', argParser(parseExport))
    .option('--size <size>', 'create missing export files sparse with this size (e.g. 512M, 1G)', argParser(parseSize))
    .option('--read-only', 'refuse writes (EPERM)', false)
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
    .addOption(
      new Option('--io <mode>', 'file I/O: auto (small on the event loop, large in the thread pool), sync, async, or mmap (zero-copy reads; see docs/CONFIG.md)')
        .choices(['auto', 'sync', 'async', 'mmap'])
        .default('auto'),
    )
    .action(serve);

  return program;
}

buildProgram()
  .parseAsync()
  .catch((err: unknown) => {
    process.stderr.write(`nbd-mirror: ${(err as Error).message}\n`);
    process.exit(2);
  });
