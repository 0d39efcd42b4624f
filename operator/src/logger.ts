/**
 * The logging surface the operator uses: a subset of pino's Logger, so a pino logger is
 * passed as is (main creates it) and tests can pass a silent or recording one. Never
 * module-global; children carry `{prewarm, image, digest, node}` bindings.
 */
export interface LogFn {
  (obj: Record<string, unknown>, msg?: string): void;
  (msg: string): void;
}

export interface Logger {
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  child(bindings: Record<string, unknown>): Logger;
}

export function silentLogger(): Logger {
  const noop: LogFn = () => {};
  const logger: Logger = { debug: noop, info: noop, warn: noop, error: noop, child: () => logger };
  return logger;
}

/** An error's code and message for a log line (never its stack of secrets-bearing URLs). */
export function errFields(err: unknown): Record<string, unknown> {
  const e = err as { code?: unknown; message?: unknown; statusCode?: unknown };
  return {
    err: typeof e?.message === 'string' ? e.message : String(err),
    ...(e?.code !== undefined ? { code: e.code } : {}),
    ...(e?.statusCode !== undefined ? { status: e.statusCode } : {}),
  };
}
