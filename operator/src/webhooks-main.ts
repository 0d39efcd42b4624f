/**
 * `kube-prewarm webhooks`: the Internet-facing webhook receiver, a process of its own with
 * no Kubernetes credentials. It serves `/webhooks/<source>` on one port and `/metrics`,
 * `/healthz`, `/readyz` on another, and does exactly one thing with an accepted push:
 * append it to the Redis push stream (claiming its dedup key first) for the operator's
 * leader to consume. It never talks to the Kubernetes API and imports nothing that could.
 *
 * Reads configuration from the environment (the only place that does; see
 * webhooks/receiver-config.ts) and the webhook sources from the file it names, re-read
 * when it changes. Shuts down gracefully on SIGTERM/SIGINT within a bound. No logic here.
 */
import { readFile } from 'node:fs/promises';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { OperatorHttpServer } from './http/server.js';
import { errFields } from './logger.js';
import { PushInbox } from './queue/push-inbox.js';
import { redisConnectionOptions } from './redis-connection.js';
import { ConfigWatcher, configDigest } from './webhooks/config-watcher.js';
import { createWebhookServer, RedisDedupStore } from './webhooks/index.js';
import { parseWebhookOptionsFile } from './webhooks/options-file.js';
import { loadReceiverConfig } from './webhooks/receiver-config.js';

async function main(): Promise<void> {
  const cfg = loadReceiverConfig(process.env);
  const text = await readFile(cfg.configPath, 'utf8');
  const options = parseWebhookOptionsFile(text);
  const log = pino({ level: cfg.logLevel, base: { component: 'webhooks-receiver' } });

  const redis = new Redis(
    redisConnectionOptions(
      cfg.redisUrl,
      { caFile: cfg.redisTlsCaFile, certFile: cfg.redisTlsCertFile, keyFile: cfg.redisTlsKeyFile },
      {
        // Commands wait for a reconnect instead of failing: an accepted event must reach the
        // stream. What can wait is bounded by maxPendingEvents (beyond it: 503, sender retries).
        maxRetriesPerRequest: null,
        enableAutoPipelining: true,
        // The receiver's ACL user may not run INFO (ioredis' ready check); a write while
        // Redis still loads its AOF fails like one while it is down: 503, the sender retries.
        enableReadyCheck: false,
      },
    ),
  );
  redis.on('error', (err) => log.warn(errFields(err), 'redis connection error'));

  const metrics = new Registry();
  const inbox = new PushInbox(redis);
  const server = createWebhookServer(
    {
      onPush: async (event) => {
        await inbox.record(event);
      },
      dedup: new RedisDedupStore(redis),
      logger: log,
      metrics,
    },
    {
      ...options,
      host: cfg.webhooksHost,
      port: cfg.webhooksPort,
      maxConnections: cfg.maxConnections,
      maxInflightBodyBytes: cfg.maxInflightBodyBytes,
      headersTimeoutMs: cfg.headersTimeoutMs,
    },
  );
  let stopping = false;
  const http = new OperatorHttpServer({
    host: cfg.httpHost,
    port: cfg.httpPort,
    metrics,
    readiness: () => {
      const reasons: string[] = [];
      if (redis.status !== 'ready') reasons.push(`redis ${redis.status}`);
      if (stopping) reasons.push('shutting down');
      return { ready: reasons.length === 0, reasons };
    },
  });
  const watcher =
    cfg.reloadIntervalMs > 0
      ? new ConfigWatcher({
          path: cfg.configPath,
          intervalMs: cfg.reloadIntervalMs,
          appliedDigest: configDigest(text),
          apply: (next) => server.reload(next),
          log: log.child({ component: 'webhooks-config' }),
          metrics,
        })
      : undefined;

  const [webhooksAddr, httpAddr] = await Promise.all([server.start(), http.start()]);
  watcher?.start();
  log.info(
    { webhooksPort: webhooksAddr.port, httpPort: httpAddr.port, sources: server.handler.sources },
    'webhook receiver started',
  );

  const shutdown = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal: sig }, 'shutting down');
    const timer = setTimeout(() => {
      log.error({ timeoutMs: cfg.shutdownTimeoutMs }, 'graceful shutdown timed out');
      process.exit(1);
    }, cfg.shutdownTimeoutMs);
    timer.unref();
    void (async () => {
      try {
        await watcher?.close();
        // New deliveries get 503; accepted ones are written to the stream before Redis closes.
        await server.close(Math.floor(cfg.shutdownTimeoutMs / 2));
        await http.close();
        await redis.quit().catch(() => redis.disconnect());
        log.info('stopped');
        process.exitCode = 0;
      } catch (err) {
        log.error(errFields(err), 'error during shutdown');
        process.exitCode = 1;
      }
    })();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

main().catch((err: unknown) => {
  // Before the logger exists (bad configuration) stderr is all there is. Messages of
  // PW_ERR_INVALID_CONFIG never quote the configuration file.
  const e = err as { code?: string; message?: string };
  process.stderr.write(`kube-prewarm webhooks: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}\n`);
  process.exit(1);
});
