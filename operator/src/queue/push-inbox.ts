/**
 * Push events travel through a Redis stream: a webhook may reach any replica (the
 * Service balances across them), but only the leader acts. Every replica appends; the
 * leader reads from a cursor kept in Redis, so events that arrive during a leader change
 * are not lost, and a restarted leader resumes where the last one stopped.
 */
import type { Redis } from 'ioredis';
import { QUEUE_PREFIX } from '../../../oci/src/job-contract.js';
import type { PushEventLike } from './types.js';

export interface PushInboxOptions {
  /** Stream key. Default `kprw:operator:push-events`. */
  streamKey?: string;
  /** Approximate stream length kept. Default 10 000. */
  maxLen?: number;
  /** XREAD block time; bounds how long `consume` takes to notice an abort. Default 1 s. */
  blockMs?: number;
}

export class PushInbox {
  readonly #redis: Redis;
  readonly #stream: string;
  readonly #cursorKey: string;
  readonly #maxLen: number;
  readonly #blockMs: number;

  constructor(redis: Redis, opts: PushInboxOptions = {}) {
    this.#redis = redis;
    this.#stream = opts.streamKey ?? `${QUEUE_PREFIX}:operator:push-events`;
    this.#cursorKey = `${this.#stream}:cursor`;
    this.#maxLen = opts.maxLen ?? 10_000;
    this.#blockMs = opts.blockMs ?? 1_000;
  }

  /** Appends an event; returns its stream id. */
  async record(event: PushEventLike): Promise<string> {
    const id = await this.#redis.xadd(
      this.#stream,
      'MAXLEN',
      '~',
      String(this.#maxLen),
      '*',
      'e',
      JSON.stringify(event),
    );
    return id ?? '';
  }

  /**
   * Reads events after the stored cursor and hands each to `handle`, advancing the cursor
   * after each, until `signal` aborts. Uses its own blocking connection. A handler error
   * is reported through `onError` and the event is skipped (events are hints; the
   * schedule and resync catch up).
   */
  async consume(
    signal: AbortSignal,
    handle: (event: PushEventLike) => void | Promise<void>,
    onError: (err: unknown) => void,
  ): Promise<void> {
    const conn = this.#redis.duplicate();
    const stop = (): void => conn.disconnect();
    signal.addEventListener('abort', stop, { once: true });
    try {
      let cursor = (await this.#redis.get(this.#cursorKey)) ?? '0-0';
      while (!signal.aborted) {
        let reply: [string, [string, string[]][]][] | null;
        try {
          reply = (await conn.xread('COUNT', 500, 'BLOCK', this.#blockMs, 'STREAMS', this.#stream, cursor)) as
            | [string, [string, string[]][]][]
            | null;
        } catch (err) {
          if (signal.aborted) return;
          onError(err);
          await new Promise((r) => setTimeout(r, 1_000));
          continue;
        }
        for (const [, entries] of reply ?? []) {
          for (const [id, fields] of entries) {
            cursor = id;
            const i = fields.indexOf('e');
            try {
              if (i >= 0) await handle(JSON.parse(fields[i + 1] ?? 'null') as PushEventLike);
            } catch (err) {
              onError(err);
            }
          }
          await this.#redis.set(this.#cursorKey, cursor);
        }
      }
    } finally {
      signal.removeEventListener('abort', stop);
      conn.disconnect();
    }
  }
}
