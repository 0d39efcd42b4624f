/**
 * The bundled Redis keeps BullMQ's jobs across a restart (issue 10: "Redis pod deleted
 * mid-rollout, nothing lost"), with the chart's ACL users (test/system/redis-acl-fixtures.ts:
 * the exact `user` directives `helm template` renders) and the AOF on.
 *
 * Why this can break: BullMQ writes through Lua scripts, and Redis 7 logs a script's
 * writes to the AOF wrapped in MULTI/EXEC. On load, EXEC re-checks ACLs for the queued
 * commands as the AOF-loading client, which is the `default` user; a default user that may
 * run nothing (`-@all`) makes Redis refuse every such transaction ("NOPERM ACLs rules
 * changed between the moment the transaction was accumulated and the EXEC call") and come
 * up without the jobs, silently (redis/redis#14541). On the real node this showed as every
 * job re-created by the operator after a Redis pod restart (test/e2e/faults.test.ts).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { FlowProducer, Queue } from 'bullmq';
import { nodeQueueName, PREWARM_JOB_NAME, QUEUE_PREFIX } from '../../oci/src/job-contract.js';
import { Cleanup } from '../harness/tmp.js';
import { type ChartRedis, startChartRedis } from './redis-acl-fixtures.js';

describe("the chart's Redis keeps BullMQ jobs across a restart (AOF, ACL users)", () => {
  const cleanup = new Cleanup();
  let r: ChartRedis;
  before(async () => {
    r = await startChartRedis(cleanup, { appendonly: true });
  });
  after(() => cleanup.run());

  test('jobs added by the operator user are there, unchanged, after a clean restart', async () => {
    const queue = nodeQueueName('node-aof');
    // The operator enqueues with a FlowProducer (operator/src/queue/bull-job-queue.ts).
    const flow = new FlowProducer({ connection: { ...fromUrl(r.urls.operator) }, prefix: QUEUE_PREFIX });
    cleanup.defer(() => flow.close());
    await flow.addBulk(
      ['a', 'b', 'c'].map((id) => ({
        name: PREWARM_JOB_NAME,
        queueName: queue,
        prefix: QUEUE_PREFIX,
        data: { id },
        opts: { jobId: `job-${id}`, removeOnComplete: false, removeOnFail: false },
      })),
    );
    const q = new Queue(queue, { connection: { ...fromUrl(r.urls.operator) }, prefix: QUEUE_PREFIX });
    cleanup.defer(() => q.close());
    const before = await Promise.all(['a', 'b', 'c'].map((id) => q.getJob(`job-${id}`)));
    assert.deepEqual(
      before.map((j) => j?.data),
      [{ id: 'a' }, { id: 'b' }, { id: 'c' }],
    );

    await r.redis.stop();
    await r.redis.start();

    const after = await Promise.all(['a', 'b', 'c'].map((id) => q.getJob(`job-${id}`)));
    const log = await readFile(r.redis.logPath, 'utf8');
    const refused = log.split('\n').filter((l) => l.includes('NOPERM'));
    assert.equal(
      refused.length,
      0,
      `Redis refused ${refused.length} transactions of its own AOF while loading it, e.g.\n${refused[0]}`,
    );
    assert.deepEqual(
      after.map((j) => ({ id: j?.id, data: j?.data, timestamp: j?.timestamp })),
      before.map((j) => ({ id: j?.id, data: j?.data, timestamp: j?.timestamp })),
      'the jobs survived the restart',
    );
    assert.equal(await q.count(), 3);
  });
});

/** ioredis options from a `redis://user:password@host:port` URL (BullMQ's `connection`). */
function fromUrl(url: string): { host: string; port: number; username: string; password: string } {
  const u = new URL(url);
  return {
    host: u.hostname,
    port: Number(u.port),
    username: decodeURIComponent(u.username),
    password: decodeURIComponent(u.password),
  };
}
