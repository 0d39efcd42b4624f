/**
 * The logging surface the webhooks need: a subset of pino's `Logger`, so a pino child
 * logger can be passed as is, and tests can pass a recorder. Secrets, tokens and
 * signatures are never passed to it.
 */
export interface LogFn {
  (obj: Record<string, unknown>, msg?: string): void;
  (msg: string): void;
}

export interface WebhookLogger {
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  child(bindings: Record<string, unknown>): WebhookLogger;
}

/** A logger that drops everything (for callers that do not care). */
export function silentLogger(): WebhookLogger {
  const noop: LogFn = () => {};
  const logger: WebhookLogger = { debug: noop, info: noop, warn: noop, error: noop, child: () => logger };
  return logger;
}
