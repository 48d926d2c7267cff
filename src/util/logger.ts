/**
 * The one logger type of the project (the daemon passes pino's logger,
 * tests pass silent or recording ones). src/nbd declares its own NbdLogger
 * of the same shape, because that library imports nothing from the project.
 */
export interface Logger {
  debug(o: object | string, msg?: string): void;
  info(o: object | string, msg?: string): void;
  warn(o: object | string, msg?: string): void;
  error(o: object | string, msg?: string): void;
}

export const SILENT_LOGGER: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};
