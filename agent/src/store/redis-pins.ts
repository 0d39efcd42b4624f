import type { Redis } from 'ioredis';
import { type Digest, isDigest } from '../../../oci/src/digest.js';
import { nodeQueueName, QUEUE_PREFIX } from '../../../oci/src/job-contract.js';
import type { PinSource } from './pins.js';

/** A job as the pin source and the re-check read it from its hash. */
export interface StoredJob {
  id: string;
  data: Record<string, unknown>;
  /** Parsed `progress` field, if any. */
  progress: unknown;
  /** Set once the job completed (its return value is stored). */
  completed: boolean;
}

/**
 * Every job hash of a node's queue, read with SCAN rather than per-state lists: a job
 * hash keeps its key whatever state it moves to, and SCAN returns every key that exists
 * for the whole scan, so a job that changes state mid-read is never missed (walking the
 * wait/active/completed lists one after another could miss one in transit).
 * Throws on Redis errors.
 */
export async function readNodeJobs(redis: Redis, node: string): Promise<StoredJob[]> {
  const base = `${QUEUE_PREFIX}:${nodeQueueName(node)}:`;
  const out: StoredJob[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${base}*`, 'COUNT', 1000, 'TYPE', 'hash');
    cursor = next;
    // Job hashes are `<base><jobId>`; `<base>meta` and other hashes have no `data` field.
    const candidates = keys.filter((k) => !k.slice(base.length).includes(':'));
    if (candidates.length === 0) continue;
    const pipe = redis.pipeline();
    for (const k of candidates) pipe.hmget(k, 'data', 'progress', 'finishedOn', 'returnvalue');
    const replies = (await pipe.exec()) ?? [];
    candidates.forEach((key, i) => {
      const [err, values] = replies[i] ?? [null, null];
      if (err) throw err;
      const [data, progress, finishedOn, returnvalue] = (values as (string | null)[] | null) ?? [];
      const parsed = parseJson(data ?? null);
      if (typeof parsed !== 'object' || parsed === null) return;
      out.push({
        id: key.slice(base.length),
        data: parsed as Record<string, unknown>,
        progress: parseJson(progress ?? null),
        completed:
          Boolean(finishedOn) && returnvalue !== null && returnvalue !== undefined && returnvalue !== 'null',
      });
    });
  } while (cursor !== '0');
  return out;
}

/**
 * Pins as the operator keeps them (operator/src/queue/job-queue.ts): a digest is pinned
 * on this node while a job for it exists in this node's queue with a non-empty `owners`
 * list — in any state, completed included (a completed job is the record that the node
 * is warm). Read from Redis on every call, never cached: an unpin must take effect at
 * the next collection, and a stale "pinned" would block room for new images. Throws
 * when Redis cannot be read (the collector then evicts nothing).
 */
export class RedisPinSource implements PinSource {
  readonly #redis: Redis;
  readonly #node: string;
  readonly #timeoutMs: number;

  /** `timeoutMs` (default 5 s) bounds the read: with Redis down, commands would otherwise wait for it. */
  constructor(redis: Redis, node: string, timeoutMs = 5_000) {
    this.#redis = redis;
    this.#node = node;
    this.#timeoutMs = timeoutMs;
  }

  async pinned(): Promise<ReadonlySet<Digest>> {
    const out = new Set<Digest>();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`pins: Redis did not answer within ${this.#timeoutMs} ms`)),
        this.#timeoutMs,
      );
    });
    let jobs: StoredJob[];
    try {
      jobs = await Promise.race([readNodeJobs(this.#redis, this.#node), timeout]);
    } finally {
      clearTimeout(timer);
    }
    for (const job of jobs) {
      const { digest, owners } = job.data;
      if (isDigest(digest) && Array.isArray(owners) && owners.length > 0) out.add(digest);
    }
    return out;
  }
}

function parseJson(s: string | null): unknown {
  if (s === null || s === '') return undefined;
  try {
    return JSON.parse(s) as unknown;
  } catch {
    return undefined;
  }
}
