/**
 * The operator binary: reads configuration from the environment (the only place that
 * does), builds the components and wires them together, and shuts down gracefully on
 * SIGTERM/SIGINT within a bound. No logic lives here.
 */
import { readFile } from 'node:fs/promises';
import { KubeConfig } from '@kubernetes/client-node';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { loadConfig } from './config.js';
import { ClientNodePort } from './kube/client-node-port.js';
import { errFields } from './logger.js';
import { Operator } from './operator.js';
import { redisConnectionOptions } from './redis-connection.js';
import { Resolver } from './resolve/resolver.js';
import { createWebhookHandler, parseWebhookOptionsFile, RedisDedupStore } from './webhooks/index.js';

async function main(): Promise<void> {
  const cfg = loadConfig(process.env);
  const log = pino({ level: cfg.logLevel, base: { component: 'operator', identity: cfg.identity } });

  const kc = new KubeConfig();
  // In-cluster service account, or $KUBECONFIG / ~/.kube/config outside a cluster.
  kc.loadFromDefault();

  const redis = new Redis(
    redisConnectionOptions(
      cfg.redisUrl,
      { caFile: cfg.redisTlsCaFile, certFile: cfg.redisTlsCertFile, keyFile: cfg.redisTlsKeyFile },
      { maxRetriesPerRequest: null, enableAutoPipelining: true, lazyConnect: false },
    ),
  );
  redis.on('error', (err) => log.warn(errFields(err), 'redis connection error'));

  const metrics = new Registry();
  const resolver = new Resolver({
    requestsPerSecond: cfg.registryRps,
    burst: cfg.registryBurst,
    allowedRegistries: cfg.allowedRegistries,
    plainHttpRegistries: cfg.plainHttpRegistries,
  });
  const kube = new ClientNodePort(kc, log.child({ component: 'kube' }), {
    ...(cfg.watchNamespace ? { namespace: cfg.watchNamespace } : {}),
  });
  const operator = new Operator(
    { kube, redis, resolver, log, metrics },
    {
      identity: cfg.identity,
      leaseNamespace: cfg.leaseNamespace,
      leaseName: cfg.leaseName,
      leaseDurationMs: cfg.leaseDurationMs,
      renewDeadlineMs: cfg.renewDeadlineMs,
      retryPeriodMs: cfg.retryPeriodMs,
      controller: {
        concurrency: cfg.concurrency,
        resyncMs: cfg.resyncMs,
        progressPollMs: cfg.progressPollMs,
        failedRetryAfterMs: cfg.failedRetryAfterMs,
        maxGateDeadlineMs: cfg.maxGateDeadlineMs,
        maxInFlightJobs: cfg.maxInFlightJobs,
        registryMaxInFlight: cfg.registryMaxInFlight,
        policy: {
          gateNodesNamespaces: cfg.gateNodesNamespaces,
          pinnedQuotaBytes: cfg.pinnedQuotaBytes,
          pinnedQuotaNamespaces: cfg.pinnedQuotaNamespaces,
        },
      },
      ...(cfg.pullCredentialsNamespace
        ? {
            pullCredentials: {
              namespace: cfg.pullCredentialsNamespace,
              maxAgeMs: cfg.pullCredentialsMaxAgeMs,
            },
          }
        : {}),
      jobQueue: { attempts: cfg.jobAttempts, backoffMs: cfg.jobBackoffMs },
      http: { host: cfg.httpHost, port: cfg.httpPort },
    },
  );

  // Webhooks in this process: development and tests only. The chart runs them in the
  // separate receiver (webhooks-main.ts), which holds no Kubernetes credentials.
  let webhooks: ReturnType<typeof createWebhookHandler> | undefined;
  if (cfg.webhooksConfig) {
    const options = parseWebhookOptionsFile(await readFile(cfg.webhooksConfig, 'utf8'));
    webhooks = createWebhookHandler(
      {
        onPush: (event) => operator.onPush(event),
        dedup: new RedisDedupStore(redis),
        logger: log.child({ component: 'webhooks' }),
        metrics,
      },
      options,
    );
    operator.mount(webhooks);
  }

  const { httpPort } = await operator.start();
  log.info({ httpPort, webhooks: webhooks?.sources ?? [] }, 'operator started');

  let stopping = false;
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
        await webhooks?.close(Math.floor(cfg.shutdownTimeoutMs / 2));
        await operator.close();
        await resolver.close();
        redis.disconnect();
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
  // Before the logger exists (bad configuration) stderr is all there is.
  const e = err as { code?: string; message?: string };
  process.stderr.write(`kube-prewarm operator: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}\n`);
  process.exit(1);
});
