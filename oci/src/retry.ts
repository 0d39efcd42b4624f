import { setTimeout as sleep } from 'node:timers/promises';
import { abortError, isPrewarmError } from './errors.js';

export interface RetryOptions {
  /** Attempts in total, the first included. Default 6. */
  attempts?: number;
  /** First backoff delay. Default 200 ms; doubles each attempt (full jitter). */
  baseDelayMs?: number;
  /** Largest delay between attempts, Retry-After included. Default 30 s. */
  maxDelayMs?: number;
  /** Called before each wait, for logs and metrics. */
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
}

/** Reads `Retry-After` (delta-seconds or HTTP-date) as milliseconds from now. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined || v === '') return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** Delay for attempt `n` (1-based): full jitter over an exponential ceiling, or the server's Retry-After. */
export function backoffDelay(n: number, opts: RetryOptions, retryAfterMs?: number): number {
  const max = opts.maxDelayMs ?? 30_000;
  if (retryAfterMs !== undefined) return Math.min(max, retryAfterMs);
  const ceiling = Math.min(max, (opts.baseDelayMs ?? 200) * 2 ** (n - 1));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/**
 * Runs `fn` until it succeeds, a non-retryable error is thrown, attempts run out, or
 * `signal` aborts. Retryable means a PrewarmError with `retryable: true`; its
 * `detail.retryAfterMs` (from a 429/503) replaces the computed backoff.
 */
export async function withRetry<T>(
  fn: (attempt: number) => Promise<T>,
  opts: RetryOptions = {},
  signal?: AbortSignal,
): Promise<T> {
  const attempts = opts.attempts ?? 6;
  for (let attempt = 1; ; attempt++) {
    if (signal?.aborted) throw abortError(signal);
    try {
      return await fn(attempt);
    } catch (err) {
      if (signal?.aborted) throw abortError(signal);
      if (!isPrewarmError(err) || !err.retryable || attempt >= attempts) throw err;
      const ra = typeof err.detail?.retryAfterMs === 'number' ? err.detail.retryAfterMs : undefined;
      const delay = backoffDelay(attempt, opts, ra);
      opts.onRetry?.(err, attempt, delay);
      try {
        await sleep(delay, undefined, signal ? { signal } : undefined);
      } catch {
        throw abortError(signal);
      }
    }
  }
}
