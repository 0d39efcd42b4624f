/**
 * One conformance suite for both DedupStore implementations: the in-memory one (fake
 * clock) and the Redis one against a real `redis-server`.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { type DedupStore, MemoryDedupStore, RedisDedupStore } from '../../../operator/src/webhooks/index.js';
import { waitUntil } from '../../harness/process.js';
import { type RedisHandle, startRedis } from '../../harness/redis.js';

interface Subject {
  store: DedupStore;
  /** Makes `key` expire now (fake clock jump, or PEXPIRE on the real key). */
  expire(key: string): Promise<void>;
}

function conformance(name: string, make: () => Promise<Subject>): void {
  describe(`DedupStore conformance: ${name}`, () => {
    let s: Subject;
    let n = 0;
    const key = (): string => `${name}-${process.pid}-${++n}`;
    before(async () => {
      s = await make();
    });

    it('claims a key once', async () => {
      const k = key();
      assert.equal(await s.store.claim(k, 60), true);
      assert.equal(await s.store.claim(k, 60), false);
      assert.equal(await s.store.claim(key(), 60), true, 'other keys are independent');
    });

    it('gives exactly one winner to concurrent claims', async () => {
      const k = key();
      const results = await Promise.all(Array.from({ length: 25 }, () => s.store.claim(k, 60)));
      assert.equal(results.filter(Boolean).length, 1);
    });

    it('lets a released key be claimed again', async () => {
      const k = key();
      assert.equal(await s.store.claim(k, 60), true);
      await s.store.release(k);
      assert.equal(await s.store.claim(k, 60), true);
      await s.store.release(`${k}-never-claimed`);
    });

    it('forgets a key after its TTL', async () => {
      const k = key();
      assert.equal(await s.store.claim(k, 60), true);
      await s.expire(k);
      assert.equal(await s.store.claim(k, 60), true);
      assert.equal(await s.store.claim(k, 60), false);
    });
  });
}

let clock = Date.parse('2024-05-14T09:31:00Z');
const memory = new MemoryDedupStore({ now: () => clock });
conformance('memory', async () => ({
  store: memory,
  expire: async () => {
    clock += 61_000;
  },
}));

let redis: RedisHandle;
let client: Redis;
before(async () => {
  redis = await startRedis();
  client = new Redis({ host: redis.host, port: redis.port, lazyConnect: true });
  await client.connect();
});
after(async () => {
  client?.disconnect();
  await redis?.close();
});

conformance('redis', async () => ({
  store: new RedisDedupStore(client, { keyPrefix: 'test:dedup:' }),
  expire: async (k) => {
    assert.equal(await client.pexpire(`test:dedup:${k}`, 1), 1);
    await waitUntil('key to expire', async () => (await client.exists(`test:dedup:${k}`)) === 0);
  },
}));

describe('RedisDedupStore specifics', () => {
  it('sets the TTL on the key it claims, under its prefix', async () => {
    const store = new RedisDedupStore(client);
    assert.equal(await store.claim('ttl-check', 3600), true);
    const ttl = await client.ttl('kprw:webhook:dedup:ttl-check');
    assert.ok(ttl > 3500 && ttl <= 3600, `ttl ${ttl}`);
  });

  it('rejects when Redis is unreachable (the router then fails open)', async () => {
    const dead = new Redis({
      host: '127.0.0.1',
      port: 1,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    dead.on('error', () => {});
    const store = new RedisDedupStore(dead);
    await assert.rejects(store.claim('x', 10));
    dead.disconnect();
  });
});

describe('MemoryDedupStore specifics', () => {
  it('stays within maxKeys by dropping the oldest', async () => {
    const small = new MemoryDedupStore({ maxKeys: 3, now: () => 0 });
    for (const k of ['a', 'b', 'c', 'd']) assert.equal(await small.claim(k, 60), true);
    assert.equal(small.size, 3);
    assert.equal(await small.claim('a', 60), true, 'the oldest key was evicted');
    assert.equal(await small.claim('d', 60), false);
  });
});
