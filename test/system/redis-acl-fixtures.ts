/**
 * A real redis-server with the chart's ACL users: the bundled Redis's `--user` arguments
 * and `default` user line are taken from `helm template` (real helm), so the tests run the
 * exact rules the chart ships, with test passwords instead of the Secret's.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Redis, type Redis as RedisClient } from 'ioredis';
import { type RedisHandle, type RedisOptions, startRedis } from '../harness/redis.js';
import type { Cleanup } from '../harness/tmp.js';
import { type K8sObject, one, render } from '../helm/render.js';

export type Role = 'operator' | 'agent' | 'webhooks';

export interface ChartRedis {
  redis: RedisHandle;
  /** Each role's URL (`redis[s]://<role>:<password>@127.0.0.1:<port>`). */
  urls: Record<Role, string>;
  /** A test-only `admin` user (`~* +@all`), not in the chart: reads ACL LOG, flushes. */
  admin: RedisClient;
  /** Connects as `role` (or any user/password), errors surfacing on commands only. */
  connect(username: string, password: string): RedisClient;
  passwords: Record<Role, string>;
}

/** The `--user` directives of the rendered bundled Redis, passwords substituted. */
export function chartUsers(objs: K8sObject[], passwords: Record<string, string>): string[][] {
  const sts = one(objs, 'StatefulSet', '-redis');
  const args = sts.spec.template.spec.containers[0].args as string[];
  const users: string[][] = [];
  for (let i = 1; i < args.length; i++) {
    if (args[i] === '--user') users.push([]);
    else
      users.at(-1)?.push(
        args[i]!.replace(/^>\$\(REDIS_([A-Z]+)_PASSWORD\)$/, (m, role: string) => {
          const pw = passwords[role.toLowerCase()];
          if (pw === undefined) throw new Error(`no test password for ${m}`);
          return `>${pw}`;
        }),
      );
  }
  const conf = one(objs, 'ConfigMap', '-redis').data['redis.conf'] as string;
  const def = /^user (default .*)$/m.exec(conf)?.[1];
  if (!def) throw new Error('the chart no longer disables the default user');
  return [def.split(' '), ...users];
}

/**
 * Renders the chart (webhooks on, so all three users exist) and starts redis-server with
 * its users, protected mode on, plus `opts` (AOF, TLS). Closed by `cleanup`.
 */
export async function startChartRedis(cleanup: Cleanup, opts: RedisOptions = {}): Promise<ChartRedis> {
  const objs = await render({
    webhooks: { enabled: true, sources: { distribution: { secrets: ['a-webhook-secret-0123456789'] } } },
  });
  const passwords: Record<Role, string> = {
    operator: randomBytes(12).toString('hex'),
    agent: randomBytes(12).toString('hex'),
    webhooks: randomBytes(12).toString('hex'),
  };
  const adminPassword = randomBytes(12).toString('hex');
  const redis = await startRedis({
    ...opts,
    users: [
      ...chartUsers(objs, passwords),
      ['admin', 'on', `>${adminPassword}`, '~*', '&*', '+@all'],
      ...(opts.users ?? []),
    ],
    auth: { username: 'admin', password: adminPassword },
    extraArgs: ['--protected-mode', 'yes', ...(opts.extraArgs ?? [])],
  });
  cleanup.defer(() => redis.close());
  const connect = (username: string, password: string): RedisClient => {
    const r = new Redis(redis.urlFor(username, password), {
      maxRetriesPerRequest: 1,
      enableReadyCheck: false,
      ...(opts.tls
        ? {
            tls: {
              ca: readFileSync(opts.tls.caFile),
              servername: 'localhost',
              ...(opts.tls.clientCert ? { cert: readFileSync(opts.tls.clientCert) } : {}),
              ...(opts.tls.clientKey ? { key: readFileSync(opts.tls.clientKey) } : {}),
            },
          }
        : {}),
    });
    r.on('error', () => undefined);
    cleanup.defer(() => r.disconnect());
    return r;
  };
  const urls = {
    operator: redis.urlFor('operator', passwords.operator),
    agent: redis.urlFor('agent', passwords.agent),
    webhooks: redis.urlFor('webhooks', passwords.webhooks),
  };
  return { redis, urls, admin: connect('admin', adminPassword), connect, passwords };
}

/** `ACL LOG` entries (denials since start or the last reset), as plain objects. */
export async function aclLog(admin: RedisClient): Promise<Record<string, string>[]> {
  const raw = (await admin.call('ACL', 'LOG')) as unknown[][];
  return raw.map((entry) => {
    const o: Record<string, string> = {};
    for (let i = 0; i + 1 < entry.length; i += 2) o[String(entry[i])] = String(entry[i + 1]);
    return o;
  });
}

/** The reply error of `fn`, or undefined when it succeeded. */
export async function replyError(fn: () => Promise<unknown>): Promise<string | undefined> {
  try {
    await fn();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}
