/**
 * Measures how long the webhook endpoint takes to answer 202 for a distribution envelope
 * with one tagged push, with the dedup claim on a real redis-server (not a test: prints
 * numbers). Run: node --import tsx test/operator/webhooks/measure-latency.ts [count]
 */
import { Agent, request } from 'node:http';
import { Redis } from 'ioredis';
import { Registry } from 'prom-client';
import { createWebhookServer, RedisDedupStore, silentLogger } from '../../../operator/src/webhooks/index.js';
import { startRedis } from '../../harness/redis.js';

const TOKEN = 'measure-token-0123456789abcdef';
const count = Number(process.argv[2] ?? 2000);
// One kept-alive connection, like a registry's notification sink.
const keepAlive = new Agent({ keepAlive: true, maxSockets: 1 });

function post(port: number, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: '/webhooks/distribution',
        agent: keepAlive,
        headers: {
          'Content-Type': 'application/vnd.docker.distribution.events.v1+json',
          Authorization: `Bearer ${TOKEN}`,
          'Content-Length': Buffer.byteLength(body),
        },
      },
      (res) => {
        res.resume();
        res.on('end', () => {
          if (res.statusCode !== 202) reject(new Error(`status ${res.statusCode}`));
          else resolve(Number(process.hrtime.bigint() - t0) / 1e6);
        });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const redis = await startRedis();
const client = new Redis({ host: redis.host, port: redis.port });
let dispatched = 0;
const server = createWebhookServer(
  {
    onPush: async () => {
      dispatched++;
    },
    dedup: new RedisDedupStore(client),
    logger: silentLogger(),
    metrics: new Registry(),
  },
  { host: '127.0.0.1', port: 0, sources: { distribution: { secrets: [TOKEN] } } },
);
try {
  const { port } = await server.start();
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const env = {
      events: [
        {
          id: `measure-${i}`,
          timestamp: new Date().toISOString(),
          action: 'push',
          target: {
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            digest: `sha256:${i.toString(16).padStart(64, '0')}`,
            repository: 'bench/app',
            tag: `t${i}`,
          },
          request: { host: 'registry.internal:5000' },
        },
      ],
    };
    times.push(await post(port, JSON.stringify(env)));
  }
  times.sort((a, b) => a - b);
  const q = (p: number): string =>
    times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(2);
  await server.handler.close(10_000);
  console.log(
    `${count} deliveries: p50 ${q(0.5)} ms, p99 ${q(0.99)} ms, max ${q(1)} ms; dispatched ${dispatched}`,
  );
} finally {
  await server.close();
  keepAlive.destroy();
  client.disconnect();
  await redis.close();
}
