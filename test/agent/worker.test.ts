/**
 * The agent's BullMQ worker against real Redis and a real registry, agents in-process:
 * routing by node, progress order, results and failure reasons, metrics and health.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import type { PrewarmJobProgress, PrewarmJobResult } from '../../oci/src/job-contract.js';
import { nodeQueueName, QUEUE_PREFIX } from '../../oci/src/job-contract.js';
import {
  Cleanup,
  type PushedImage,
  pushImage,
  type RedisHandle,
  type RegistryHandle,
} from '../harness/index.js';
import {
  enqueue,
  MiB,
  metricValue,
  readJob,
  startAgent,
  startTestRedis,
  waitForJobEnd,
} from './daemon-fixtures.js';
import { startTestRegistry } from './fixtures.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const PHASES = ['queued', 'resolving', 'fetching', 'startup-ready', 'warm', 'unpacked'];

describe('agent worker (real Redis, real registry)', () => {
  let redis: RedisHandle;
  let registry: RegistryHandle;
  let conn: Redis;
  let imgA: PushedImage;
  let imgB: PushedImage;

  before(async () => {
    ({ redis, conn } = await startTestRedis(cleanup));
    registry = await startTestRegistry(cleanup);
    imgA = await pushImage(registry, {
      repository: 'worker/a',
      tag: 'v1',
      layers: [{ randomBytes: 3 * MiB }, { randomBytes: 2 * MiB }],
    });
    imgB = await pushImage(registry, {
      repository: 'worker/b',
      tag: 'v1',
      layers: [{ randomBytes: 2 * MiB }],
    });
  });

  it('two agents with different node names each consume only their own jobs', async () => {
    const n1 = await startAgent(cleanup, { node: 'node-one', redisUrl: redis.url });
    const n2 = await startAgent(cleanup, { node: 'node-two', redisUrl: redis.url });
    const repoA = `${registry.host}/worker/a`;
    const repoB = `${registry.host}/worker/b`;
    const j1 = await enqueue(conn, { node: 'node-one', repository: repoA, digest: imgA.digest });
    const j2 = await enqueue(conn, { node: 'node-two', repository: repoB, digest: imgB.digest });
    // A job for a node with no agent: must stay untouched.
    const j3 = await enqueue(conn, { node: 'node-three', repository: repoA, digest: imgA.digest });

    const v1 = await waitForJobEnd(conn, 'node-one', j1);
    const v2 = await waitForJobEnd(conn, 'node-two', j2);
    assert.equal(v1.state, 'completed', v1.failedReason);
    assert.equal(v2.state, 'completed', v2.failedReason);
    assert.match(v1.processedBy ?? '', /^node-one\//);
    assert.match(v2.processedBy ?? '', /^node-two\//);
    // Each store holds only its own node's image.
    assert.ok(await n1.daemon.store!.stat(imgA.manifests[0]!.layers[0]!.digest as `sha256:${string}`));
    assert.equal(
      await n1.daemon.store!.stat(imgB.manifests[0]!.layers[0]!.digest as `sha256:${string}`),
      undefined,
    );
    assert.ok(await n2.daemon.store!.stat(imgB.manifests[0]!.layers[0]!.digest as `sha256:${string}`));
    assert.equal(
      await n2.daemon.store!.stat(imgA.manifests[0]!.layers[0]!.digest as `sha256:${string}`),
      undefined,
    );
    const v3 = await readJob(conn, 'node-three', j3);
    assert.equal(v3.state, 'other');
    assert.equal(v3.processedBy, undefined);
    assert.equal(await conn.zcard(`${QUEUE_PREFIX}:${nodeQueueName('node-three')}:completed`), 0);

    const r1 = v1.returnvalue as PrewarmJobResult;
    assert.equal(r1.phase, 'warm');
    assert.equal(r1.manifestDigest, imgA.manifests[0]!.digest);
    const layerBytes =
      imgA.manifests[0]!.layers.reduce((n, l) => n + l.size, 0) + imgA.manifests[0]!.config.size;
    assert.equal(r1.bytesTotal, layerBytes);
    assert.equal(r1.bytesFromRegistry, layerBytes);
    await n1.daemon.close();
    await n2.daemon.close();
  });

  it('reports progress in order: monotonic bytes and phases, ending warm', async () => {
    const img = await pushImage(registry, {
      repository: 'worker/progress',
      tag: 'v1',
      layers: [{ randomBytes: 6 * MiB }, { randomBytes: 4 * MiB }, { randomBytes: 1 * MiB }],
    });
    const events = new QueueEvents(nodeQueueName('node-progress'), {
      connection: { host: redis.host, port: redis.port },
      prefix: QUEUE_PREFIX,
    });
    cleanup.defer(() => events.close());
    await events.waitUntilReady();
    const seen: PrewarmJobProgress[] = [];
    events.on('progress', ({ data }) => seen.push(data as PrewarmJobProgress));
    const agent = await startAgent(cleanup, {
      node: 'node-progress',
      redisUrl: redis.url,
      // Slow enough that several byte updates are reported.
      extra: { KUBE_PREWARM_BANDWIDTH: '4MiB', KUBE_PREWARM_CHUNK_SIZE: '1MiB' },
    });
    const id = await enqueue(conn, {
      node: 'node-progress',
      repository: `${registry.host}/worker/progress`,
      digest: img.digest,
    });
    const view = await waitForJobEnd(conn, 'node-progress', id);
    assert.equal(view.state, 'completed', view.failedReason);
    // The completed event follows the last progress event on the same stream.
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(seen.length >= 3, `expected several progress events, got ${seen.length}`);
    for (let i = 1; i < seen.length; i++) {
      const a = seen[i - 1]!;
      const b = seen[i]!;
      assert.ok(PHASES.indexOf(b.phase) >= PHASES.indexOf(a.phase), `phase went ${a.phase} → ${b.phase}`);
      assert.ok(b.bytesDone >= a.bytesDone, `bytes went ${a.bytesDone} → ${b.bytesDone}`);
      assert.ok(b.layersDone >= a.layersDone);
    }
    const phases = [...new Set(seen.map((p) => p.phase))];
    assert.deepEqual(phases, ['resolving', 'fetching', 'warm']);
    const last = seen.at(-1)!;
    const total = (view.returnvalue as PrewarmJobResult).bytesTotal;
    assert.deepEqual(last, {
      phase: 'warm',
      bytesDone: total,
      bytesTotal: total,
      layersDone: 3,
      layersTotal: 3,
    });
    assert.ok(
      seen.some((p) => p.phase === 'fetching' && p.bytesDone > 0 && p.bytesDone < total),
      'at least one mid-download report',
    );
    assert.deepEqual(view.progress, last);
    await agent.daemon.close();
  });

  it('fails permanently with a clear reason: unknown manifest, missing platform, job for another node', async () => {
    const agent = await startAgent(cleanup, { node: 'node-fail', redisUrl: redis.url });
    const unknown = await enqueue(
      conn,
      {
        node: 'node-fail',
        repository: `${registry.host}/worker/a`,
        digest: `sha256:${'0'.repeat(64)}`,
      },
      { attempts: 5 },
    );
    const multi = await pushImage(registry, {
      repository: 'worker/multi',
      tag: 'v1',
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64' },
      ],
      layers: [{ randomBytes: 64 * 1024 }],
    });
    const platform = await enqueue(
      conn,
      {
        node: 'node-fail',
        repository: `${registry.host}/worker/multi`,
        digest: multi.digest,
        platform: 'linux/s390x',
      },
      { attempts: 5 },
    );
    const v = await waitForJobEnd(conn, 'node-fail', unknown);
    assert.equal(v.state, 'failed');
    assert.match(v.failedReason ?? '', /^PW_ERR_MANIFEST_UNKNOWN: /);
    // UnrecoverableError: one attempt, not five.
    assert.equal(v.attemptsMade, 1);
    const p = await waitForJobEnd(conn, 'node-fail', platform);
    assert.equal(p.state, 'failed');
    assert.equal(p.attemptsMade, 1);
    assert.match(p.failedReason ?? '', /^PW_ERR_PLATFORM_NOT_FOUND: /);
    const metrics = await (await fetch(`${agent.url}/metrics`)).text();
    assert.equal(metricValue(metrics, 'kprw_agent_jobs_total', { outcome: 'failed' }), 2);
    await agent.daemon.close();
  });

  it('serves /metrics, /healthz and /readyz', async () => {
    const agent = await startAgent(cleanup, { node: 'node-health', redisUrl: redis.url });
    const id = await enqueue(conn, {
      node: 'node-health',
      repository: `${registry.host}/worker/a`,
      digest: imgA.digest,
    });
    assert.equal((await waitForJobEnd(conn, 'node-health', id)).state, 'completed');
    const ready = await fetch(`${agent.url}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), { ok: true, checks: { started: 'ok', redis: 'ok', worker: 'ok' } });
    assert.equal((await fetch(`${agent.url}/healthz`)).status, 200);
    const text = await (await fetch(`${agent.url}/metrics`)).text();
    const total = imgA.manifests[0]!.layers.reduce((n, l) => n + l.size, 0) + imgA.manifests[0]!.config.size;
    assert.equal(metricValue(text, 'kprw_agent_jobs_total', { outcome: 'completed' }), 1);
    assert.equal(metricValue(text, 'kprw_agent_bytes_fetched_total', { source: 'registry' }), total);
    assert.ok(metricValue(text, 'kprw_agent_chunk_duration_seconds_count') >= 3);
    // Manifest, config and two layers.
    assert.equal(metricValue(text, 'kprw_agent_store_blobs'), 4);
    assert.ok(metricValue(text, 'kprw_agent_store_bytes') >= total);
    await agent.daemon.close();
    const after = await fetch(`${agent.url}/readyz`).catch(() => undefined);
    assert.equal(after, undefined, 'listener closed after close()');
  });
});
