import type { RedisOptions } from 'ioredis';

/**
 * ioredis options for a `redis://[user:password@]host:port[/db]` or `rediss://` URL,
 * as BullMQ needs them: `maxRetriesPerRequest: null` so a command waits through a
 * Redis restart instead of failing the job, and reconnects forever with a capped
 * backoff (a DaemonSet must outlive any Redis outage).
 */
export function redisOptionsFromUrl(url: string): RedisOptions {
  const u = new URL(url);
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: u.port ? Number(u.port) : 6379,
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(Number.isInteger(db) && db > 0 ? { db } : {}),
    ...(u.protocol === 'rediss:' ? { tls: { servername: u.hostname } } : {}),
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 10), 5_000),
  };
}
