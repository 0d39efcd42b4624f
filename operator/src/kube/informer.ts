/**
 * A list-watch cache that never gives up. client-node's informer stops on a watch error
 * (anything but a timeout or 410 Gone) and only reports it; a controller must keep
 * watching, so this restarts it with capped exponential backoff. The process never exits
 * because a watch failed.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ADD,
  DELETE,
  ERROR,
  type Informer,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  makeInformer,
  type ObjectCache,
  UPDATE,
} from '@kubernetes/client-node';
import type { WatchedCache } from './port.js';

export interface InformerLogger {
  warn(obj: object, msg: string): void;
}

export interface ResilientInformerOptions {
  /** First restart delay after a watch error. Default 500 ms; doubles up to `maxBackoffMs`. */
  backoffMs?: number;
  /** Default 30 s. */
  maxBackoffMs?: number;
  labelSelector?: string;
}

export class ResilientInformer<T extends object> implements WatchedCache<T> {
  // Typed loosely inside: custom resources arrive as plain JSON (timestamps are strings),
  // which client-node's KubernetesObject type does not describe.
  readonly #informer: Informer<KubernetesObject> & ObjectCache<KubernetesObject>;
  readonly #handlers: ((obj: T) => void)[] = [];
  readonly #log: InformerLogger;
  readonly #what: string;
  readonly #opts: Required<Omit<ResilientInformerOptions, 'labelSelector'>>;
  #synced = false;
  #stopped = true;
  #failures = 0;
  #syncWaiters: (() => void)[] = [];
  #listed = false;

  constructor(
    kc: KubeConfig,
    path: string,
    list: () => Promise<{ items: T[]; metadata?: { resourceVersion?: string } }>,
    log: InformerLogger,
    opts: ResilientInformerOptions = {},
  ) {
    // client-node's start() resolves even when the initial list failed (it reports that
    // through the error callback instead), so success is recorded here.
    const trackedList = async (): Promise<KubernetesListObject<KubernetesObject>> => {
      const got = await list();
      this.#listed = true;
      return got as KubernetesListObject<KubernetesObject>;
    };
    this.#informer = makeInformer<KubernetesObject>(kc, path, trackedList, opts.labelSelector);
    this.#log = log;
    this.#what = path;
    this.#opts = { backoffMs: opts.backoffMs ?? 500, maxBackoffMs: opts.maxBackoffMs ?? 30_000 };
    const emit = (obj: KubernetesObject): void => {
      // A successful event proves the watch works again.
      this.#failures = 0;
      for (const h of this.#handlers) h(obj as T);
    };
    this.#informer.on(ADD, emit);
    this.#informer.on(UPDATE, emit);
    this.#informer.on(DELETE, emit);
    this.#informer.on(ERROR, (err: unknown) => void this.#restart(err));
  }

  get synced(): boolean {
    return this.#synced;
  }

  list(): readonly T[] {
    return this.#informer.list() as readonly KubernetesObject[] as readonly T[];
  }

  get(name: string, namespace?: string): T | undefined {
    return this.#informer.get(name, namespace) as T | undefined;
  }

  onChange(handler: (obj: T) => void): void {
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

  async start(): Promise<void> {
    this.#stopped = false;
    await this.#startOnce();
  }

  async #startOnce(): Promise<void> {
    for (;;) {
      if (this.#stopped) return;
      try {
        this.#listed = false;
        await this.#informer.start();
        // On a failed list the error callback has already scheduled a restart.
        if (this.#listed) this.#markSynced();
        return;
      } catch (err) {
        await this.#backoff(err);
      }
    }
  }

  #markSynced(): void {
    if (this.#synced) return;
    this.#synced = true;
    const waiters = this.#syncWaiters;
    this.#syncWaiters = [];
    for (const w of waiters) w();
  }

  async #backoff(err: unknown): Promise<void> {
    this.#failures++;
    const delay = Math.min(this.#opts.maxBackoffMs, this.#opts.backoffMs * 2 ** (this.#failures - 1));
    this.#log.warn(
      { err: String((err as Error)?.message ?? err), path: this.#what, delayMs: delay },
      'watch failed; restarting',
    );
    await sleep(delay);
  }

  async #restart(err: unknown): Promise<void> {
    if (this.#stopped) return;
    await this.#backoff(err);
    await this.#startOnce();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#informer.stop();
  }
}
