/**
 * A list-watch cache that stores a projection of each object, never gives up, and keeps
 * memory bounded:
 *
 * - `project` turns each listed or watched object into what the operator keeps (a Node
 *   becomes a ~1 KB NodeView instead of a 10–20 KB object with its image list), so a
 *   5,000-node cluster costs a few MB of cache;
 * - lists are paginated (`limit`/`continue`), so a relist never holds every full object
 *   at once;
 * - a watch that ends is resumed from the last resourceVersion (bookmarks keep it fresh);
 *   410 Gone relists; any other error backs off exponentially and retries. The process
 *   never exits because a watch failed.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { type KubeConfig, Watch } from '@kubernetes/client-node';
import type { Logger } from '../logger.js';
import type { WatchedCache } from './port.js';

/** What a cache logs with: the operator's Logger, or anything with its warn and debug. */
export type ListWatchLogger = Pick<Logger, 'warn' | 'debug'>;

export interface ListPage<T> {
  items: T[];
  metadata?: { resourceVersion?: string; _continue?: string; continue?: string };
}

export interface ListWatchOptions<T, S> {
  /** API path of the collection, e.g. `/api/v1/nodes`. */
  path: string;
  /** Lists one page (`limit`, `continue`). */
  list: (limit: number, cont: string | undefined) => Promise<ListPage<T>>;
  project: (obj: T) => S;
  /** Cache key of a raw object (`namespace/name`). */
  keyOf: (obj: T) => string;
  /** Page size. Default 500. */
  pageSize?: number;
  /** First backoff after an error; doubles up to `maxBackoffMs`. Default 500 ms / 30 s. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Server-side watch duration before a clean reconnect. Default 240 s. */
  watchSeconds?: number;
}

export class ListWatchCache<T, S> implements WatchedCache<S> {
  readonly #kc: KubeConfig;
  readonly #opts: ListWatchOptions<T, S>;
  readonly #log: ListWatchLogger;
  readonly #items = new Map<string, S>();
  readonly #handlers: ((obj: S) => void)[] = [];
  #resourceVersion = '';
  #synced = false;
  #syncWaiters: (() => void)[] = [];
  #abort: AbortController | undefined;
  #watchReq: AbortController | undefined;
  #loop: Promise<void> | undefined;

  constructor(kc: KubeConfig, log: ListWatchLogger, opts: ListWatchOptions<T, S>) {
    this.#kc = kc;
    this.#log = log;
    this.#opts = opts;
  }

  get synced(): boolean {
    return this.#synced;
  }

  list(): readonly S[] {
    return [...this.#items.values()];
  }

  get(name: string, namespace?: string): S | undefined {
    return this.#items.get(`${namespace ?? ''}/${name}`);
  }

  onChange(handler: (obj: S) => void): void {
    this.#handlers.push(handler);
  }

  waitForSync(signal?: AbortSignal): Promise<void> {
    if (this.#synced) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = (): void => {
        this.#syncWaiters = this.#syncWaiters.filter((w) => w !== done);
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#syncWaiters.push(done);
    });
  }

  /** Starts listing and watching; resolves after the first list (or its first failure). */
  async start(): Promise<void> {
    if (this.#loop) return;
    this.#abort = new AbortController();
    const firstList = new Promise<void>((resolve) => {
      this.#loop = this.#run(this.#abort!.signal, resolve);
    });
    await firstList;
  }

  async stop(): Promise<void> {
    this.#abort?.abort();
    this.#watchReq?.abort();
    await this.#loop;
    this.#loop = undefined;
  }

  #emit(obj: S): void {
    for (const h of this.#handlers) h(obj);
  }

  async #relist(): Promise<void> {
    const seen = new Set<string>();
    let cont: string | undefined;
    let rv = '';
    do {
      const page = await this.#opts.list(this.#opts.pageSize ?? 500, cont);
      for (const raw of page.items ?? []) {
        const key = this.#opts.keyOf(raw);
        seen.add(key);
        const s = this.#opts.project(raw);
        this.#items.set(key, s);
        this.#emit(s);
      }
      rv = page.metadata?.resourceVersion ?? rv;
      cont = page.metadata?._continue ?? page.metadata?.continue ?? undefined;
      if (cont === '') cont = undefined;
    } while (cont);
    for (const [key, s] of this.#items) {
      if (!seen.has(key)) {
        this.#items.delete(key);
        this.#emit(s);
      }
    }
    this.#resourceVersion = rv;
    if (!this.#synced) {
      this.#synced = true;
      for (const w of this.#syncWaiters.splice(0)) w();
    }
  }

  async #run(signal: AbortSignal, listed: () => void): Promise<void> {
    let failures = 0;
    const backoff = async (err: unknown): Promise<void> => {
      failures++;
      const delay = Math.min(
        this.#opts.maxBackoffMs ?? 30_000,
        (this.#opts.backoffMs ?? 500) * 2 ** (failures - 1),
      );
      this.#log.warn(
        { path: this.#opts.path, err: String((err as Error)?.message ?? err), retryInMs: delay },
        'list/watch failed',
      );
      await sleep(delay, undefined, { signal }).catch(() => undefined);
    };
    while (!signal.aborted) {
      if (this.#resourceVersion === '') {
        try {
          await this.#relist();
          failures = 0;
        } catch (err) {
          listed();
          await backoff(err);
          continue;
        }
        listed();
      }
      const outcome = await this.#watchOnce(signal);
      if (outcome === 'gone') this.#resourceVersion = '';
      else if (outcome instanceof Error) await backoff(outcome);
      else failures = 0;
    }
  }

  /** One watch request; resolves when it ends: 'ok' (clean end), 'gone' (410) or the error. */
  #watchOnce(signal: AbortSignal): Promise<'ok' | 'gone' | Error> {
    return new Promise((resolve) => {
      let gone = false;
      let settled = false;
      const finish = (v: 'ok' | 'gone' | Error): void => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      };
      const onAbort = (): void => {
        this.#watchReq?.abort();
        finish('ok');
      };
      signal.addEventListener('abort', onAbort, { once: true });
      const watch = new Watch(this.#kc);
      watch
        .watch(
          this.#opts.path,
          {
            resourceVersion: this.#resourceVersion,
            allowWatchBookmarks: true,
            timeoutSeconds: this.#opts.watchSeconds ?? 240,
          },
          (phase: string, obj: unknown) => {
            const o = obj as T & { metadata?: { resourceVersion?: string }; code?: number };
            if (phase === 'ERROR') {
              if (o.code === 410) gone = true;
              return;
            }
            const rv = o.metadata?.resourceVersion;
            if (phase === 'BOOKMARK') {
              if (rv) this.#resourceVersion = rv;
              return;
            }
            const key = this.#opts.keyOf(o);
            const s = this.#opts.project(o);
            if (phase === 'DELETED') this.#items.delete(key);
            else this.#items.set(key, s);
            if (rv) this.#resourceVersion = rv;
            this.#emit(s);
          },
          (err: unknown) => {
            if (gone) finish('gone');
            else if (!err || (err as Error).name === 'TimeoutError' || signal.aborted) finish('ok');
            else if ((err as { statusCode?: number }).statusCode === 410) finish('gone');
            else finish(err instanceof Error ? err : new Error(String(err)));
          },
        )
        .then((req) => {
          this.#watchReq = req;
          if (signal.aborted) req.abort();
        })
        .catch((err: unknown) => finish(err instanceof Error ? err : new Error(String(err))));
    });
  }
}
