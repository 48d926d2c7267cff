/**
 * Daemon logging: pino, JSON lines on stderr, optionally also appended to a
 * log file (--log-file; <data-dir>/rewind.log when given without a path).
 * Writes are synchronous so nothing is lost when the process exits.
 */
import pino, { type Logger, type DestinationStream, type StreamEntry, type Level } from 'pino';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function isLogLevel(s: string): s is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(s);
}

export interface DaemonLogger {
  logger: Logger;
  /** Flushes the file destination (stderr is synchronous). */
  flush(): void;
}

export function createLogger(level: LogLevel, logFile?: string): DaemonLogger {
  const options = {
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  const stderr = pino.destination({ dest: 2, sync: true });
  if (!logFile || level === 'silent') {
    return { logger: pino(options, stderr), flush: () => undefined };
  }
  const file = pino.destination({ dest: logFile, sync: true, mkdir: true, append: true });
  const streams: StreamEntry[] = [
    { level: level as Level, stream: stderr },
    { level: level as Level, stream: file },
  ];
  const multi: DestinationStream = pino.multistream(streams);
  return {
    logger: pino(options, multi),
    flush: () => {
      try {
        file.flushSync();
      } catch {
        // nothing buffered or already closed
      }
    },
  };
}
