// Structured logging: one pino logger for the process. JSON lines on stdout for machines (a pipe,
// a file, journald); on a terminal the same records, prettified for a person (pino-pretty).
import { pino, type Logger, type LevelWithSilent } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function createLogger(level: LevelWithSilent = 'info'): Logger {
  const options = { level, base: { pid: process.pid } };
  if (!process.stdout.isTTY) return pino(options);
  // sync: a line is on the terminal before the process can exit (the JSON path is synchronous too).
  return pino(
    options,
    pretty({
      sync: true,
      colorize: true,
      singleLine: true,
      translateTime: 'SYS:HH:MM:ss.l',
      // "[a] peer-link: peer link connected {peer: b}": which node and part speaks, first.
      messageFormat: '{if node}[{node}] {end}{if component}{component}: {end}{msg}',
      ignore: 'pid,hostname,node,component',
    }),
  );
}
