/**
 * Re-reads the webhook configuration file when its content changes, so a rotated secret
 * or a new source in the mounted Secret takes effect without a restart and without a
 * secret-derived pod annotation. Kubernetes replaces a mounted Secret's files atomically
 * (a `..data` symlink swap) within about a minute of the change; polling the content is
 * reliable across that swap where inotify on the file is not.
 *
 * A file that cannot be read, parsed or built into a handler leaves the running
 * configuration in place; the error is logged by code and message only (never the file's
 * content) and counted in `kprw_webhook_config_reloads_total{result="error"}`.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { Registry } from 'prom-client';
import type { WebhookOptions } from './handler.js';
import type { WebhookLogger } from './logger.js';
import { getOrCreateCounter } from './metrics.js';
import { parseWebhookOptionsFile } from './options-file.js';

export interface ConfigWatcherOptions {
  /** The file to watch. */
  path: string;
  /** Poll interval, ms. */
  intervalMs: number;
  /** SHA-256 (hex) of the content already applied, so an unchanged file is not re-applied. */
  appliedDigest: string;
  /** Applies new options; throws (PW_ERR_INVALID_CONFIG) to refuse them. */
  apply(options: WebhookOptions): void;
  log: WebhookLogger;
  metrics: Registry;
}

/** SHA-256 hex of a configuration file's bytes (what the watcher compares). */
export function configDigest(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export class ConfigWatcher {
  readonly #opts: ConfigWatcherOptions;
  #applied: string;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  readonly #reloads;

  constructor(opts: ConfigWatcherOptions) {
    this.#opts = opts;
    this.#applied = opts.appliedDigest;
    this.#reloads = getOrCreateCounter(
      opts.metrics,
      'kprw_webhook_config_reloads_total',
      'Webhook configuration file changes applied (ok) or refused (error)',
      ['result'],
    );
  }

  /** Polls until `signal` aborts or `close` is called. */
  start(signal?: AbortSignal): void {
    const tick = (): void => {
      this.#running = this.check().finally(() => {
        this.#running = undefined;
        if (this.#timer !== undefined) this.#timer = setTimeout(tick, this.#opts.intervalMs);
      });
    };
    this.#timer = setTimeout(tick, this.#opts.intervalMs);
    signal?.addEventListener('abort', () => void this.close(), { once: true });
  }

  /** Reads the file once and applies it when its content changed. Never throws. */
  async check(): Promise<void> {
    const log = this.#opts.log;
    let text: string;
    try {
      text = await readFile(this.#opts.path, 'utf8');
    } catch (err) {
      log.warn(
        { code: (err as NodeJS.ErrnoException).code },
        'webhook configuration file unreadable; keeping the running one',
      );
      return;
    }
    const digest = configDigest(text);
    if (digest === this.#applied) return;
    try {
      this.#opts.apply(parseWebhookOptionsFile(text));
      this.#applied = digest;
      this.#reloads.inc({ result: 'ok' });
      log.info({}, 'webhook configuration reloaded');
    } catch (err) {
      // Remember the refused content too: it is logged once, not on every poll.
      this.#applied = digest;
      this.#reloads.inc({ result: 'error' });
      const e = err as { code?: unknown; message?: unknown };
      log.error(
        { code: e.code, reason: typeof e.message === 'string' ? e.message : String(err) },
        'webhook configuration refused; keeping the running one',
      );
    }
  }

  async close(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }
}
