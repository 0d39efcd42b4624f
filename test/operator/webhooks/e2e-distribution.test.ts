/**
 * End to end with real components: Debian's `docker-registry` (CNCF distribution 2.8) is
 * configured with `notifications.endpoints` pointing at the webhook server (through a small
 * proxy that loses the first push response), images are pushed with `skopeo copy`, and the
 * dedup store is a real `redis-server`.
 *
 * Proves: a skopeo push reaches onPush once with the right registry/repository/tag/digest;
 * the registry's retry of a delivery whose response was lost is deduplicated (onPush still
 * once); the pull events the registry sends for every manifest read are ignored; an index
 * push (skopeo --all) is one event; a push nobody watches is accepted and counted.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { Registry as PromRegistry } from 'prom-client';
import {
  createWebhookServer,
  DELIVERIES_METRIC,
  EVENTS_METRIC,
  type PushEvent,
  RedisDedupStore,
  silentLogger,
  type WebhookServer,
} from '../../../operator/src/webhooks/index.js';
import { pushImage } from '../../harness/images.js';
import { waitUntil } from '../../harness/process.js';
import { type RedisHandle, startRedis } from '../../harness/redis.js';
import { type RegistryHandle, startRegistry } from '../../harness/registry.js';

const TOKEN = 'e2e-notify-token-0123456789abcdef';
const WATCHED_TAGS = new Set(['v1', 'multi']);

/**
 * Forwards each notification to the webhook server; for the first delivery that contains a
 * tagged push it waits for the server's answer and then destroys the registry's connection
 * instead of relaying it, as if the response were lost on the way back.
 */
interface LossyProxy {
  url: string;
  deliveries: { hasPush: boolean; dropped: boolean; status: number }[];
  close(): Promise<void>;
}

async function startLossyProxy(targetPort: number): Promise<LossyProxy> {
  const deliveries: LossyProxy['deliveries'] = [];
  let dropped = false;
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      let hasPush = false;
      try {
        const env = JSON.parse(body.toString('utf8')) as {
          events?: { action?: string; target?: { tag?: string } }[];
        };
        hasPush = (env.events ?? []).some((e) => e.action === 'push' && e.target?.tag !== undefined);
      } catch {
        // Forwarded as is; the webhook server judges it.
      }
      const up = request(
        { host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers },
        (upRes) => {
          const out: Buffer[] = [];
          upRes.on('data', (c: Buffer) => out.push(c));
          upRes.on('end', () => {
            const drop = hasPush && !dropped;
            deliveries.push({ hasPush, dropped: drop, status: upRes.statusCode ?? 0 });
            if (drop) {
              dropped = true;
              req.socket.destroy();
              return;
            }
            res.writeHead(upRes.statusCode ?? 502, upRes.headers);
            res.end(Buffer.concat(out));
          });
        },
      );
      up.on('error', () => req.socket.destroy());
      up.end(body);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    deliveries,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('distribution → webhook end to end', () => {
  let redis: RedisHandle;
  let redisClient: Redis;
  let webhooks: WebhookServer;
  let proxy: LossyProxy;
  let registry: RegistryHandle;
  const metrics = new PromRegistry();
  const events: PushEvent[] = [];

  const counter = async (name: string, labels: Record<string, string>): Promise<number> => {
    const m = metrics.getSingleMetric(name);
    if (!m) return 0;
    const { values } = await m.get();
    return values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val))?.value ?? 0;
  };

  before(async () => {
    redis = await startRedis();
    redisClient = new Redis({ host: redis.host, port: redis.port, lazyConnect: true });
    await redisClient.connect();
    webhooks = createWebhookServer(
      {
        onPush: async (e) => {
          events.push(e);
          return { matched: e.tag !== undefined && WATCHED_TAGS.has(e.tag) ? 1 : 0 };
        },
        dedup: new RedisDedupStore(redisClient, { keyPrefix: `e2e:${process.pid}:` }),
        logger: silentLogger(),
        metrics,
      },
      { host: '127.0.0.1', port: 0, sources: { distribution: { secrets: [TOKEN] } } },
    );
    const addr = await webhooks.start();
    proxy = await startLossyProxy(addr.port);
    registry = await startRegistry({
      notifications: {
        url: `${proxy.url}/webhooks/distribution`,
        headers: { Authorization: `Bearer ${TOKEN}` },
      },
    });
  });

  after(async () => {
    await registry?.close();
    await proxy?.close();
    await webhooks?.close(5000);
    redisClient?.disconnect();
    await redis?.close();
  });

  it('delivers a skopeo push to onPush once, despite the registry retrying a lost response', async () => {
    const pushed = await pushImage(registry, {
      repository: 'e2e/app',
      tag: 'v1',
      layers: [{ files: { 'etc/greeting': 'hello from a webhook test\n' } }],
    });
    await waitUntil('the push event to reach onPush', async () => events.length >= 1, { timeoutMs: 15_000 });
    // The registry retries the envelope whose response the proxy dropped; the retry reaches
    // the server (answered 202) and is counted as a duplicate.
    await waitUntil(
      'the registry to retry the dropped delivery',
      async () => (await counter(EVENTS_METRIC, { source: 'distribution', outcome: 'duplicate' })) >= 1,
      {
        timeoutMs: 15_000,
        process: registry.process,
      },
    );
    await waitUntil('dispatches to finish', async () => webhooks.handler.pending === 0);
    assert.equal(proxy.deliveries.filter((d) => d.dropped).length, 1);
    assert.ok(proxy.deliveries.filter((d) => d.hasPush).length >= 2, 'the dropped push delivery was retried');
    assert.equal(events.length, 1, `onPush once, got ${JSON.stringify(events)}`);
    const e = events[0]!;
    assert.equal(e.source, 'distribution');
    assert.equal(e.registry, registry.host);
    assert.equal(e.repository, 'e2e/app');
    assert.equal(e.tag, 'v1');
    assert.equal(e.digest, pushed.digest);
    assert.equal(e.mediaType, pushed.mediaType);
    assert.match(e.eventId, /^[0-9a-f-]{36}$/);
    assert.equal(await counter(EVENTS_METRIC, { source: 'distribution', outcome: 'dispatched' }), 1);
  });

  it('ignores the pull events every manifest read sends', async () => {
    const ignoredBefore = await counter(EVENTS_METRIC, { source: 'distribution', outcome: 'ignored' });
    const res = await fetch(`${registry.url}/v2/e2e/app/manifests/v1`, {
      headers: {
        Accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json',
      },
    });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    await waitUntil(
      'the pull event to arrive',
      async () =>
        (await counter(EVENTS_METRIC, { source: 'distribution', outcome: 'ignored' })) > ignoredBefore,
      { timeoutMs: 15_000, process: registry.process },
    );
    await waitUntil('dispatches to finish', async () => webhooks.handler.pending === 0);
    assert.equal(events.length, 1, 'a pull dispatches nothing');
  });

  it('turns a multi-platform index push (skopeo --all) into one event for the index', async () => {
    const pushed = await pushImage(registry, {
      repository: 'e2e/app',
      tag: 'multi',
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64', variant: 'v8' },
      ],
      layers: (p) => [{ files: { 'etc/arch': `${p.architecture}\n` } }],
    });
    assert.equal(pushed.isIndex, true);
    await waitUntil('the index push to reach onPush', async () => events.length >= 2, {
      timeoutMs: 15_000,
      process: registry.process,
    });
    // The child manifests were pushed by digest before the index: their events carry no tag.
    await waitUntil('dispatches to finish', async () => webhooks.handler.pending === 0);
    const multi = events.filter((e) => e.tag === 'multi');
    assert.equal(multi.length, 1);
    assert.equal(multi[0]!.digest, pushed.digest);
    assert.equal(multi[0]!.mediaType, pushed.mediaType);
    assert.equal(events.filter((e) => e.tag === undefined).length, 0);
  });

  it('accepts and counts a push under a tag nobody watches', async () => {
    const before = await counter(EVENTS_METRIC, { source: 'distribution', outcome: 'unwatched' });
    await pushImage(registry, {
      repository: 'e2e/app',
      tag: 'scratch',
      layers: [{ files: { 'tmp/x': 'x' } }],
    });
    await waitUntil(
      'the unwatched push to be counted',
      async () => (await counter(EVENTS_METRIC, { source: 'distribution', outcome: 'unwatched' })) > before,
      { timeoutMs: 15_000, process: registry.process },
    );
    assert.equal(
      await counter(DELIVERIES_METRIC, { source: 'distribution', status: '401' }),
      0,
      'the registry always authenticated',
    );
  });
});
