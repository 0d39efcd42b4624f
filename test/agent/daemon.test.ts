/**
 * The agent as a real child process (`kube-prewarm agent`) against real Redis and a real
 * registry behind a byte-counting fault proxy: kill -9 and resume, graceful SIGTERM,
 * Redis restarted mid-rollout, a full disk, and invalid configuration.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { parseJournal } from '../../agent/src/store/fs-store.js';
import type { PrewarmJobProgress, PrewarmJobResult } from '../../oci/src/job-contract.js';
import { nodeQueueName, QUEUE_PREFIX } from '../../oci/src/job-contract.js';
import {
  Cleanup,
  type FaultProxyHandle,
  freePort,
  makeTempDir,
  type PushedImage,
  pushImage,
  type RedisHandle,
  type RegistryHandle,
  waitUntil,
} from '../harness/index.js';
import {
  enqueue,
  MiB,
  metricValue,
  readJob,
  spawnAgent,
  startTestRedis,
  waitForJobEnd,
} from './daemon-fixtures.js';
import { hashFile } from './fetch-helpers.js';
import { startProxiedRegistry } from './fixtures.js';

const execFileP = promisify(execFile);
const cleanup = new Cleanup();
after(() => cleanup.run());

async function progressBytes(conn: Redis, node: string, id: string): Promise<number> {
  return ((await readJob(conn, node, id)).progress as PrewarmJobProgress | undefined)?.bytesDone ?? 0;
}

function blobPath(repo: string, digest: string): string {
  return `/v2/${repo}/blobs/${digest}`;
}

/** Durable bytes per digest as the store's journals record them (what a restart resumes from). */
async function durableBytes(store: string, digest: string, size: number): Promise<number> {
  const text = await readFile(join(store, 'ingest', digest.slice(7), 'journal'), 'utf8').catch(
    () => undefined,
  );
  if (text !== undefined) return parseJournal(text, size).size;
  const committed = await readFile(join(store, 'blobs', 'sha256', digest.slice(7))).catch(() => undefined);
  return committed ? size : 0;
}

/** Every committed blob hashes to its name. */
async function assertNoCorruptBlob(store: string): Promise<number> {
  const dir = join(store, 'blobs', 'sha256');
  const names = await readdir(dir);
  for (const name of names)
    assert.equal(await hashFile(join(dir, name)), `sha256:${name}`, `blob ${name} intact`);
  return names.length;
}

describe('agent daemon process (real Redis, registry, fault proxy)', () => {
  let registry: RegistryHandle;
  let proxy: FaultProxyHandle;

  before(async () => {
    ({ registry, proxy } = await startProxiedRegistry(cleanup));
  });

  it('rejects invalid configuration at start, naming every problem', async () => {
    const err = await execFileP(process.execPath, ['--import', 'tsx', 'agent/src/cli/run.ts', 'agent'], {
      env: {
        ...process.env,
        KUBE_PREWARM_NODE_NAME: 'Bad_Node',
        KUBE_PREWARM_CONCURRENCY: '0',
        KUBE_PREWARM_REDIS_URL: 'redis://:s3cret-password@127.0.0.1:1',
        KUBE_PREWARM_DISK_BUDGET: 'lots',
      },
    }).then(
      () => assert.fail('agent started with invalid config'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(err.code, 2);
    assert.match(err.stderr, /PW_ERR_INVALID_CONFIG|invalid agent configuration/);
    assert.match(err.stderr, /KUBE_PREWARM_NODE_NAME \("Bad_Node"\): must be a DNS subdomain/);
    assert.match(err.stderr, /KUBE_PREWARM_CONCURRENCY \("0"\): must be an integer/);
    assert.match(err.stderr, /KUBE_PREWARM_DISK_BUDGET \("lots"\): invalid size/);
    assert.doesNotMatch(err.stderr, /s3cret-password/);
  });

  describe('with Redis', () => {
    let redis: RedisHandle;
    let conn: Redis;
    let dir: string;
    let big: PushedImage;

    before(async () => {
      ({ redis, conn } = await startTestRedis(cleanup, { appendonly: true }));
      dir = await makeTempDir('daemon', cleanup);
      big = await pushImage(registry, {
        repository: 'daemon/big',
        tag: 'v1',
        layers: [{ randomBytes: 40 * MiB }, { randomBytes: 8 * MiB }],
      });
    });

    it('kill -9 mid-download, restart: the job completes and only the missing bytes are fetched again', async () => {
      const node = 'node-crash';
      const store = join(dir, 'store-crash');
      const slow = { KUBE_PREWARM_BANDWIDTH: '12MiB' };
      let agent = await spawnAgent({ node, store, redisUrl: redis.url, logDir: dir, extra: slow });
      proxy.resetStats();
      const repo = 'daemon/big';
      const id = await enqueue(conn, {
        node,
        repository: `${proxy.host}/${repo}`,
        digest: big.digest,
        tag: 'v1',
      });
      const m = big.manifests[0]!;
      const total = m.config.size + m.layers.reduce((n, l) => n + l.size, 0);
      await waitUntil('a third downloaded', async () => (await progressBytes(conn, node, id)) > total / 3, {
        timeoutMs: 60_000,
        process: agent.proc,
      });
      await agent.proc.kill();
      const blobs = [m.config, ...m.layers];
      const durable = new Map<string, number>();
      for (const b of blobs) durable.set(b.digest, await durableBytes(store, b.digest, b.size));
      const kept = [...durable.values()].reduce((n, v) => n + v, 0);
      assert.ok(kept > 0, 'some bytes were durable at the kill');
      assert.ok(kept < total, 'the kill came before the end');
      const before = readJob(conn, node, id);
      assert.equal((await before).state, 'other', 'the job is not finished (still locked by the dead agent)');

      proxy.resetStats();
      agent = await spawnAgent({ node, store, redisUrl: redis.url, logDir: dir, extra: slow });
      const view = await waitForJobEnd(conn, node, id, { process: agent.proc });
      assert.equal(view.state, 'completed', view.failedReason);
      const result = view.returnvalue as PrewarmJobResult;
      for (const b of blobs) {
        const fetched = proxy.stats.bytesSent.get(blobPath(repo, b.digest)) ?? 0;
        assert.equal(fetched, b.size - durable.get(b.digest)!, `${b.digest}: only the missing bytes`);
      }
      assert.equal(result.bytesFromRegistry, total - kept);
      assert.equal(result.bytesAlreadyPresent, kept);
      assert.equal(result.bytesTotal, total);
      await assertNoCorruptBlob(store);
      const metrics = await (await fetch(`${agent.url}/metrics`)).text();
      assert.equal(
        metricValue(metrics, 'kprw_agent_bytes_fetched_total', { source: 'registry' }),
        total - kept,
      );
      const exit = await agent.proc.stop(15_000);
      assert.deepEqual(exit, { code: 0, signal: null });
    });

    it('SIGTERM mid-download: the job goes back to the queue with its partial data, the agent exits on its own', async () => {
      const node = 'node-term';
      const store = join(dir, 'store-term');
      const slow = { KUBE_PREWARM_BANDWIDTH: '12MiB' };
      let agent = await spawnAgent({ node, store, redisUrl: redis.url, logDir: dir, extra: slow });
      const id = await enqueue(conn, {
        node,
        repository: `${registry.host}/daemon/big`,
        digest: big.digest,
        tag: 'v1',
      });
      await waitUntil('some progress', async () => (await progressBytes(conn, node, id)) > 4 * MiB, {
        timeoutMs: 60_000,
        process: agent.proc,
      });
      // Grace far above the agent's own bound: a SIGKILL from the harness would show as signal.
      const exit = await agent.proc.stop(30_000);
      assert.deepEqual(exit, { code: 0, signal: null });
      const log = await readFile(agent.logPath, 'utf8');
      assert.match(log, /job handed back to the queue/);
      const waiting = await conn.lrange(`${QUEUE_PREFIX}:${nodeQueueName(node)}:wait`, 0, -1);
      assert.deepEqual(waiting, [id], 'back in wait, for the next agent');
      const view = await readJob(conn, node, id);
      assert.equal(view.attemptsMade, 0, 'no attempt spent');
      const m = big.manifests[0]!;
      let kept = 0;
      for (const b of [m.config, ...m.layers]) kept += await durableBytes(store, b.digest, b.size);
      assert.ok(kept > 0, 'partial downloads persisted');

      agent = await spawnAgent({ node, store, redisUrl: redis.url, logDir: dir });
      const done = await waitForJobEnd(conn, node, id, { process: agent.proc });
      assert.equal(done.state, 'completed', done.failedReason);
      assert.equal((done.returnvalue as PrewarmJobResult).bytesAlreadyPresent, kept);
      assert.deepEqual(await agent.proc.stop(15_000), { code: 0, signal: null });
    });

    it('Redis restarted (AOF) mid-rollout: no job lost, none run twice to completion', async () => {
      const node = 'node-aof';
      const store = join(dir, 'store-aof');
      const images: PushedImage[] = [];
      for (let i = 0; i < 6; i++)
        images.push(
          await pushImage(registry, {
            repository: `daemon/roll${i}`,
            tag: 'v1',
            layers: [{ randomBytes: 4 * MiB }],
          }),
        );
      const agent = await spawnAgent({
        node,
        store,
        redisUrl: redis.url,
        logDir: dir,
        extra: {
          KUBE_PREWARM_BANDWIDTH: '8MiB',
          KUBE_PREWARM_JOB_LOCK: '20s',
          KUBE_PREWARM_STALLED_INTERVAL: '20s',
        },
      });
      const ids: string[] = [];
      for (const [i, img] of images.entries())
        ids.push(
          await enqueue(conn, { node, repository: `${registry.host}/daemon/roll${i}`, digest: img.digest }),
        );
      const completed = `${QUEUE_PREFIX}:${nodeQueueName(node)}:completed`;
      await waitUntil('first job completed', async () => (await conn.zcard(completed)) >= 1, {
        timeoutMs: 60_000,
        process: agent.proc,
      });
      const doneBefore = await conn.zcard(completed);
      assert.ok(doneBefore < ids.length, 'the restart comes mid-rollout');
      await redis.stop();
      await redis.start();
      for (const id of ids) {
        const v = await waitForJobEnd(conn, node, id, { process: agent.proc, timeoutMs: 120_000 });
        assert.equal(v.state, 'completed', `${id}: ${v.failedReason}`);
      }
      assert.equal(await conn.zcard(completed), ids.length);
      const metrics = await (await fetch(`${agent.url}/metrics`)).text();
      assert.equal(metricValue(metrics, 'kprw_agent_jobs_total', { outcome: 'completed' }), ids.length);
      assert.equal(metricValue(metrics, 'kprw_agent_jobs_total', { outcome: 'failed' }), 0);
      // Each job finished exactly once in the agent's own log.
      const log = await readFile(agent.logPath, 'utf8');
      for (const id of ids) {
        const runs = log
          .split('\n')
          .filter((l) => l.includes('"prewarm job done"') && l.includes(`"job":"${id}"`));
        assert.equal(runs.length, 1, `${id} completed once`);
      }
      assert.deepEqual(await agent.proc.stop(15_000), { code: 0, signal: null });
    });
  });

  describe('disk full (a 96 MiB tmpfs as the store)', () => {
    let redis: RedisHandle;
    let conn: Redis;
    let mnt: string;

    before(async () => {
      ({ redis, conn } = await startTestRedis(cleanup));
      mnt = await makeTempDir('tmpfs', cleanup);
      await execFileP('mount', ['-t', 'tmpfs', '-o', 'size=96m', 'tmpfs', mnt]);
      cleanup.defer(() => execFileP('umount', ['-l', mnt]).then(() => undefined));
    });

    it('fails the job with a clear reason, leaves no corrupt blob, keeps serving what it has, recovers when space returns', async () => {
      const node = 'node-full';
      const store = join(mnt, 'store');
      const logDir = await makeTempDir('full-logs', cleanup);
      const small = await pushImage(registry, {
        repository: 'full/small',
        tag: 'v1',
        layers: [{ randomBytes: 20 * MiB }],
      });
      const large = await pushImage(registry, {
        repository: 'full/large',
        tag: 'v1',
        layers: [{ randomBytes: 24 * MiB }, { randomBytes: 6 * MiB }],
      });
      const mirrorPort = await freePort();
      const agent = await spawnAgent({
        node,
        store,
        redisUrl: redis.url,
        logDir,
        extra: {
          KUBE_PREWARM_DISK_BUDGET_PERCENT: '100',
          KUBE_PREWARM_BANDWIDTH: '10MiB',
          KUBE_PREWARM_MIRROR_HOST: '127.0.0.1',
          KUBE_PREWARM_MIRROR_PORT: String(mirrorPort),
        },
      });
      const a = await enqueue(conn, {
        node,
        repository: `${registry.host}/full/small`,
        digest: small.digest,
      });
      assert.equal((await waitForJobEnd(conn, node, a, { process: agent.proc })).state, 'completed');

      const b = await enqueue(
        conn,
        { node, repository: `${registry.host}/full/large`, digest: large.digest },
        { attempts: 1 },
      );
      await waitUntil(
        'large download under way',
        async () => (await progressBytes(conn, node, b)) > 2 * MiB,
        { timeoutMs: 60_000, process: agent.proc },
      );
      // Something else on the node fills the filesystem.
      const filler = join(mnt, 'filler');
      await writeFile(filler, Buffer.alloc(60 * MiB)).catch(() => undefined);
      const v = await waitForJobEnd(conn, node, b, { process: agent.proc });
      assert.equal(v.state, 'failed');
      assert.match(
        v.failedReason ?? '',
        /^PW_ERR_DISK_FULL: disk full while [a-z ]+sha256:[a-f0-9]{64} \(ENOSPC\)/,
      );
      assert.match(v.failedReason ?? '', /store uses .* free on the filesystem, .* still to download/);
      assert.equal(agent.proc.running, true, 'the agent survives');

      // Nothing corrupt: every committed blob hashes to its name; the small image is whole.
      await assertNoCorruptBlob(store);
      const sm = small.manifests[0]!;
      const layer = sm.layers[0]!;
      // Still ready, still serving the small image from the store through its mirror.
      assert.equal((await fetch(`${agent.url}/readyz`)).status, 200);
      const res = await fetch(
        `http://127.0.0.1:${mirrorPort}/v2/full/small/blobs/${layer.digest}?ns=${registry.host}`,
      );
      assert.equal(res.status, 200);
      const body = Buffer.from(await res.arrayBuffer());
      assert.equal(body.length, layer.size);
      const { createHash } = await import('node:crypto');
      assert.equal(`sha256:${createHash('sha256').update(body).digest('hex')}`, layer.digest);

      // Space comes back; the operator retries the job: it resumes and completes.
      await rm(filler, { force: true });
      const queue = new Queue(nodeQueueName(node), { connection: conn, prefix: QUEUE_PREFIX });
      cleanup.defer(() => queue.close());
      const job = await Job.fromId(queue, b);
      await job!.retry('failed');
      const done = await waitForJobEnd(conn, node, b, { process: agent.proc });
      assert.equal(done.state, 'completed', done.failedReason);
      assert.ok((done.returnvalue as PrewarmJobResult).bytesAlreadyPresent > 0, 'resumed, not restarted');
      await assertNoCorruptBlob(store);
      assert.deepEqual(await agent.proc.stop(15_000), { code: 0, signal: null });
    });
  });
});
