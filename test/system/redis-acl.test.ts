/**
 * Redis is no longer one trust domain (issue 11): the real redis-server runs the chart's
 * ACL users (test/system/redis-acl-fixtures.ts renders them with the real helm), and every
 * real component connects as its own user, in the chart's topology: the webhook receiver
 * process as `webhooks`, the operator process as `operator`, the node agents (AgentDaemon)
 * as `agent`. A push travels registry → receiver → push stream → operator → per-node jobs
 * → agents → status, the ImagePrewarm's deletion cleans its jobs up, and Redis's ACL LOG
 * shows that no component was refused anything on the way. Then each user is made to try
 * what it must not do, and Redis refuses it; and a job forged into another node's queue (the
 * agent user can write every node's queue: docs/security.md, Redis) is refused by the
 * agent there before any pull secret is read or any connection is made.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Queue } from 'bullmq';
import pino from 'pino';
import { AgentDaemon } from '../../agent/src/daemon/agent.js';
import { loadConfig as loadAgentConfig } from '../../agent/src/daemon/config.js';
import type { SecretReader } from '../../agent/src/daemon/pull-secrets.js';
import { RedisPeerDirectory } from '../../agent/src/fetch/peer-directory.js';
import type { Digest } from '../../oci/src/digest.js';
import {
  nodeQueueName,
  PREWARM_JOB_NAME,
  type PrewarmJobData,
  prewarmJobId,
  QUEUE_PREFIX,
} from '../../oci/src/job-contract.js';
import { agentEnv, readJob, startAgent, waitForJobEnd } from '../agent/daemon-fixtures.js';
import { pushImage } from '../harness/images.js';
import { type KubeHandle, REPO_ROOT, startKube } from '../harness/kube.js';
import { createNode } from '../harness/kube-nodes.js';
import type { ManagedProcess } from '../harness/process.js';
import { type RegistryHandle, startRegistry } from '../harness/registry.js';
import { Cleanup, freePort, makeTempDir } from '../harness/tmp.js';
import { render } from '../helm/render.js';
import { asDigest, eventually, prewarmApi, QueueReader, spawnOperator } from '../operator/env.js';
import { startReceiver } from '../operator/webhooks/receiver-process.js';
import { aclLog, type ChartRedis, chartUsers, replyError, startChartRedis } from './redis-acl-fixtures.js';

const MiB = 1024 * 1024;

/** One command on a fresh plain connection; resolves with the first reply line. */
function rawCommand(port: number, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port });
    let reply = '';
    sock.setTimeout(10_000, () => sock.destroy(new Error('no reply')));
    sock.once('connect', () =>
      sock.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`),
    );
    sock.on('data', (d) => {
      reply += d.toString('latin1');
      const i = reply.indexOf('\r\n');
      if (i < 0) return;
      sock.destroy();
      resolve(reply.slice(0, i));
    });
    sock.once('error', reject);
  });
}
const NOPERM = /^NOPERM /;

describe('Redis with the chart’s ACL users: each component as its own user, end to end', () => {
  const cleanup = new Cleanup();
  let r: ChartRedis;
  let kube: KubeHandle;
  let registry: RegistryHandle;
  let operator: ManagedProcess | undefined;
  let reader: QueueReader;
  const api = () => prewarmApi(kube.kc);

  before(async () => {
    r = await startChartRedis(cleanup);
    kube = await startKube();
    cleanup.defer(() => kube.stop());
    const dir = await makeTempDir('redis-acl', cleanup);
    const port = await freePort();
    operator = await spawnOperator('operator', kube.kubeconfigPath, r.urls.operator, dir, {
      KUBE_PREWARM_LEASE_NAME: 'redis-acl-test',
      KUBE_PREWARM_HTTP_PORT: String(port),
    });
    cleanup.defer(async () => {
      await operator?.stop();
    });
    await eventually(
      'operator ready (its Redis user connected)',
      async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200,
      120_000,
    );
    const secret = randomBytes(24).toString('hex');
    const receiver = await startReceiver({
      dir,
      redisUrl: r.urls.webhooks,
      options: { sources: { distribution: { secrets: [secret] } } },
    });
    cleanup.defer(() => receiver.stop());
    registry = await startRegistry({
      notifications: { url: receiver.url('distribution'), headers: { Authorization: `Bearer ${secret}` } },
    });
    cleanup.defer(() => registry.close());
    for (const node of ['acl-a', 'acl-b']) {
      await createNode(kube.kc, { name: node, labels: { pool: 'acl' } });
      await startAgent(cleanup, { node, redisUrl: r.urls.agent });
    }
    // Reads the queues as the operator would (its user may).
    reader = new QueueReader(r.connect('operator', r.passwords.operator));
    cleanup.defer(() => reader.close());
  });
  after(() => cleanup.run());

  test('push → webhook → operator → agents → status, then deletion cleans up; Redis refused nothing', async (t) => {
    const first = await pushImage(registry, {
      repository: 'acl/app',
      tag: 'stable',
      layers: [{ randomBytes: 4 * MiB }],
    });
    await api().create('acl-app', {
      images: [{ repository: `${registry.host}/acl/app`, tag: 'stable' }],
      nodeSelector: { pool: 'acl' },
    });
    await eventually(
      'both nodes warm',
      async () => {
        const s = (await api().get('acl-app'))?.status?.images?.[0];
        return s?.digest === first.digest && s.warmNodes === 2;
      },
      120_000,
    );

    // A push under the watched tag reaches the operator through the receiver's stream.
    const second = await pushImage(registry, {
      repository: 'acl/app',
      tag: 'stable',
      layers: [{ randomBytes: 3 * MiB }],
    });
    const p = await eventually(
      'the pushed digest warm on both nodes',
      async () => {
        const got = await api().get('acl-app');
        const s = got?.status?.images?.[0];
        return s?.digest === second.digest && s.warmNodes === 2 ? got : undefined;
      },
      120_000,
    );
    assert.equal(p.status!.images![0]!.lastTrigger?.source, 'distribution', 'through the webhook user');
    for (const n of ['acl-a', 'acl-b']) {
      const job = await reader.job(n, prewarmJobId(asDigest(second.digest), n, 'cache'));
      assert.equal(job?.state, 'completed', n);
      assert.equal(job?.data.trigger, 'push:distribution');
    }

    // Deletion: the finalizer unpins and removes every job of the resource on every node.
    await api().remove('acl-app');
    await eventually('ImagePrewarm gone and its jobs removed', async () => {
      if (await api().get('acl-app')) return false;
      for (const n of ['acl-a', 'acl-b']) if ((await reader.jobs(n)).length > 0) return false;
      return true;
    });

    const denials = (await aclLog(r.admin)).filter((e) => e.username !== 'admin');
    t.diagnostic(`ACL LOG after the whole flow: ${denials.length} entries`);
    assert.deepEqual(denials, [], 'no component was refused a command or key it needs');
  });

  test('the agent user: node queues and the peer directory only; no push stream, dedup keys, orphans or admin command', async () => {
    const agent = r.connect('agent', r.passwords.agent);
    // What it needs: its queue's keys (BullMQ), the peer directory through its set commands.
    assert.equal(await agent.hset('kprw:node.acl-a:probe', 'x', '1'), 1);
    const directory = new RedisPeerDirectory(agent, { selfUrl: 'http://10.0.0.1:5051' });
    const digest = `sha256:${'c'.repeat(64)}` as Digest;
    await directory.announce(digest);
    const other = new RedisPeerDirectory(agent, { selfUrl: 'http://10.0.0.2:5051' });
    assert.deepEqual(
      (await other.holders(digest)).map((s) => s.name),
      ['10.0.0.1:5051'],
    );
    await directory.withdraw(digest);

    const refused: [string, () => Promise<unknown>][] = [
      ['XADD to the push stream', () => agent.xadd('kprw:operator:push-events', '*', 'e', '{}')],
      ['read the push stream', () => agent.xrange('kprw:operator:push-events', '-', '+')],
      ['move the push cursor', () => agent.set('kprw:operator:push-events:cursor', '0-0')],
      ['claim a webhook dedup key', () => agent.set('kprw:webhook:dedup:x', '1', 'EX', 60, 'NX')],
      ['the orphans set', () => agent.sadd('kprw:orphans', 'x')],
      ['a key outside kube-prewarm', () => agent.set('app:session', 'x')],
      ['DEL in the peer directory (set commands only)', () => agent.del(`kprw:holders:${'c'.repeat(64)}`)],
      ['CONFIG SET dir (the classic Redis file write)', () => agent.config('SET', 'dir', '/tmp')],
      ['FLUSHALL', () => agent.flushall()],
      ['KEYS', () => agent.keys('*')],
      ['ACL LIST', () => agent.call('ACL', 'LIST')],
      ['CLIENT LIST', () => agent.call('CLIENT', 'LIST')],
      ['SHUTDOWN', () => agent.call('SHUTDOWN', 'NOSAVE')],
      ['REPLICAOF', () => agent.call('REPLICAOF', '127.0.0.1', '1')],
    ];
    for (const [what, fn] of refused)
      assert.match((await replyError(fn)) ?? 'allowed', NOPERM, `agent: ${what}`);
    // A script runs with its caller's permissions: EVAL is no way around the key patterns.
    assert.match(
      (await replyError(() => agent.eval("return redis.call('SADD', 'kprw:orphans', 'x')", 0))) ?? 'allowed',
      /can't access at least one of the keys/,
    );
    assert.equal(await r.admin.exists('kprw:orphans'), 0);
    // Refused by Redis's own defaults before ACLs are consulted; ACL DRYRUN shows the user's rules refuse them too.
    for (const cmd of [
      ['DEBUG', 'SLEEP', '0'],
      ['MODULE', 'LOAD', '/tmp/x.so'],
    ])
      assert.match(String(await r.admin.call('ACL', 'DRYRUN', 'agent', ...cmd)), /no permissions to run/);

    // Documented limit (docs/security.md, Redis): one agent user serves every node, so it
    // can reach another node's queue. The agents' own checks are the next test.
    assert.equal(await agent.hset('kprw:node.acl-b:probe', 'x', '1'), 1);
    await r.admin.del('kprw:node.acl-a:probe', 'kprw:node.acl-b:probe');
  });

  test('the webhooks user: SET/DEL on dedup keys and XADD on the push stream, nothing else', async () => {
    const wh = r.connect('webhooks', r.passwords.webhooks);
    assert.equal(await wh.set('kprw:webhook:dedup:acl-test', '1', 'EX', 60, 'NX'), 'OK');
    assert.equal(await wh.del('kprw:webhook:dedup:acl-test'), 1);
    assert.match(
      (await wh.xadd('kprw:operator:push-events', 'MAXLEN', '~', '10000', '*', 'e', 'null')) ?? '',
      /-/,
    );
    const queue = new Queue(nodeQueueName('acl-a'), {
      connection: wh,
      prefix: QUEUE_PREFIX,
      skipVersionCheck: true,
    });
    cleanup.defer(() => queue.close());
    const refused: [string, () => Promise<unknown>][] = [
      ['add a job (BullMQ)', () => queue.add(PREWARM_JOB_NAME, {}, { jobId: 'x' })],
      ['read a job hash', () => wh.hget('kprw:node.acl-a:x', 'data')],
      ['take a job (BZPOPMIN on a marker)', () => wh.bzpopmin('kprw:node.acl-a:marker', 0.01)],
      ['read the push stream', () => wh.xrange('kprw:operator:push-events', '-', '+')],
      ['read it with XREAD', () => wh.xread('STREAMS', 'kprw:operator:push-events', '0-0')],
      ['delete the push stream', () => wh.del('kprw:operator:push-events')],
      ['overwrite it with SET', () => wh.set('kprw:operator:push-events', 'x')],
      ['move the cursor', () => wh.set('kprw:operator:push-events:cursor', '0-0')],
      ['the peer directory', () => wh.sadd(`kprw:holders:${'d'.repeat(64)}`, 'http://evil:1')],
      ['scripts', () => wh.eval('return 1', 0)],
      ['SCAN', () => wh.scan(0)],
      ['INFO', () => wh.info()],
      ['CONFIG GET', () => wh.config('GET', '*')],
    ];
    for (const [what, fn] of refused)
      assert.match((await replyError(fn)) ?? 'allowed', NOPERM, `webhooks: ${what}`);
  });

  test('the operator user: every kprw: key, but no dangerous command and nothing outside kprw:', async () => {
    const op = r.connect('operator', r.passwords.operator);
    assert.equal(await op.sadd('kprw:orphans', 'acl-test'), 1);
    assert.equal(await op.srem('kprw:orphans', 'acl-test'), 1);
    assert.match(await op.info('server'), /redis_version/, 'INFO for ioredis’ ready check');
    for (const [what, fn] of [
      ['a key outside kube-prewarm', () => op.get('app:session')],
      ['CONFIG SET', () => op.config('SET', 'dir', '/tmp')],
      ['FLUSHALL', () => op.flushall()],
      ['KEYS', () => op.keys('kprw:*')],
      ['ACL SETUSER', () => op.call('ACL', 'SETUSER', 'evil', 'on', '>x', '~*', '+@all')],
      ['MONITOR', () => op.call('MONITOR')],
    ] as [string, () => Promise<unknown>][])
      assert.match((await replyError(fn)) ?? 'allowed', NOPERM, `operator: ${what}`);
    for (const cmd of [
      ['DEBUG', 'SLEEP', '0'],
      ['MODULE', 'LOAD', '/tmp/x.so'],
      ['SHUTDOWN', 'NOSAVE'],
    ])
      assert.match(String(await r.admin.call('ACL', 'DRYRUN', 'operator', ...cmd)), /no permissions to run/);
  });

  test('no way in without a password: the default user is off, wrong passwords are refused', async () => {
    const anon = r.connect('', '');
    assert.match((await replyError(() => anon.get('kprw:orphans'))) ?? 'allowed', /^NOAUTH /);
    for (const [user, pw] of [
      ['default', ''],
      ['default', 'anything'],
      ['agent', r.passwords.operator],
      ['operator', ''],
    ] as const)
      assert.match(await rawCommand(r.redis.port, ['AUTH', user, pw]), /^-WRONGPASS /, `AUTH ${user}`);
    assert.match(await rawCommand(r.redis.port, ['PING']), /^-NOAUTH /, 'nothing before AUTH');
  });

  test('every command a BullMQ script can call is granted to the agent, and none is @dangerous for the operator', async () => {
    const root = join(REPO_ROOT, 'node_modules', 'bullmq', 'dist', 'esm', 'commands');
    const commands = new Set<string>();
    const dynamic = new Set<string>();
    const walk = async (dir: string): Promise<void> => {
      for (const e of await readdir(dir, { withFileTypes: true })) {
        const path = join(dir, e.name);
        if (e.isDirectory()) await walk(path);
        else if (e.name.endsWith('.lua')) {
          const lua = await readFile(path, 'utf8');
          for (const m of lua.matchAll(/rcall\(\s*(['"]?)(\w+)\1/g))
            (m[1] ? commands : dynamic).add(m[1] ? m[2]!.toLowerCase() : m[2]!);
        }
      }
    };
    await walk(root);
    // Commands passed in a variable, and what they are set to (BullMQ's sources): the push to
    // a wait list (LPUSH, or RPUSH for lifo), and paginate's SCARD/HLEN and SSCAN/HSCAN.
    const variables: Record<string, string[]> = {
      pushCmd: ['lpush', 'rpush'],
      countCommand: ['scard', 'hlen'],
      command: ['sscan', 'hscan'],
    };
    const unknown = [...dynamic].filter((v) => !(v in variables));
    assert.deepEqual(unknown, [], 'a new dynamic rcall in BullMQ: check which commands it sends');
    for (const v of dynamic) for (const c of variables[v]!) commands.add(c);
    assert.ok(commands.size > 40, `found only ${commands.size} commands: has BullMQ's layout changed?`);
    const objs = await render({
      webhooks: { enabled: true, sources: { distribution: { secrets: ['a-webhook-secret-0123456789'] } } },
    });
    const agentRules = chartUsers(objs, { operator: 'x', agent: 'x', webhooks: 'x' }).find(
      (u) => u[0] === 'agent',
    )!;
    const granted = new Set(agentRules.filter((t) => t.startsWith('+')).map((t) => t.slice(1)));
    assert.deepEqual(
      [...commands].filter((c) => !granted.has(c)).sort(),
      [],
      'BullMQ script commands the agent user lacks',
    );
    const dangerous = new Set((await r.admin.call('ACL', 'CAT', 'dangerous')) as string[]);
    assert.deepEqual(
      [...commands].filter((c) => dangerous.has(c)),
      [],
      'BullMQ script commands the operator user (-@dangerous) lacks',
    );
  });

  test('a job forged into another node’s queue: refused for a registry that node does not allow, before any pull secret is read', async () => {
    // Where the forged job points: a real server that counts what reaches it.
    let requests = 0;
    const lure: Server = createServer((_req, res) => {
      requests++;
      res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => lure.listen(0, '127.0.0.1', resolve));
    cleanup.defer(() => new Promise<void>((resolve) => lure.close(() => resolve())));
    const lurePort = (lure.address() as { port: number }).port;

    // Node acl-c's agent may read pull secrets and may reach the test registry only.
    let secretReads = 0;
    const secretReader: SecretReader = {
      read: async () => {
        secretReads++;
        return undefined;
      },
    };
    const dir = await makeTempDir('agent-acl-c', cleanup);
    const config = loadAgentConfig(
      agentEnv({
        node: 'acl-c',
        store: join(dir, 'store'),
        redisUrl: r.urls.agent,
        extra: { KUBE_PREWARM_ALLOWED_REGISTRIES: registry.host, KUBE_PREWARM_READ_PULL_SECRETS: 'true' },
      }),
    );
    const daemon = new AgentDaemon(config, {
      logger: pino({ level: 'info' }, pino.destination({ dest: join(dir, 'agent.log'), sync: true })),
      runtime: null,
      secretReader,
    });
    cleanup.defer(() => daemon.close());
    await daemon.start();

    // Written by another node's agent user: it can, with one agent user for every node.
    const attacker = r.connect('agent', r.passwords.agent);
    const queue = new Queue(nodeQueueName('acl-c'), {
      connection: attacker,
      prefix: QUEUE_PREFIX,
      skipVersionCheck: true,
    });
    cleanup.defer(() => queue.close());
    const forged = (over: Partial<PrewarmJobData>): PrewarmJobData => ({
      v: 1,
      owners: [{ namespace: 'victim', name: 'app', uid: 'uid-victim' }],
      repository: `127.0.0.1:${lurePort}/victim/app`,
      digest: `sha256:${'e'.repeat(64)}` as Digest,
      platform: 'linux/amd64',
      node: 'acl-c',
      mode: 'cache',
      pullSecrets: ['victim/regcred'],
      triggeredAt: Date.now(),
      trigger: 'spec',
      ...over,
    });
    const add = async (id: string, data: PrewarmJobData) => {
      await queue.add(PREWARM_JOB_NAME, data, {
        jobId: id,
        attempts: 3,
        removeOnComplete: false,
        removeOnFail: false,
      });
      return id;
    };
    const egress = await add('forged-registry', forged({}));
    const view = await waitForJobEnd(attacker, 'acl-c', egress, { timeoutMs: 120_000 });
    assert.equal(view.state, 'failed');
    assert.match(view.failedReason ?? '', /^PW_ERR_EGRESS_DENIED: egress to 127\.0\.0\.1:\d+ refused/);
    assert.equal(view.attemptsMade, 1, 'permanent: not retried');
    assert.equal(secretReads, 0, 'no pull secret read for a registry the node may not reach');
    assert.equal(requests, 0, 'nothing sent to it');

    const misrouted = await add(
      'forged-node',
      forged({ node: 'acl-a', repository: `${registry.host}/acl/app` }),
    );
    const v2 = await waitForJobEnd(attacker, 'acl-c', misrouted, { timeoutMs: 120_000 });
    assert.match(
      v2.failedReason ?? '',
      /^PW_ERR_INVALID_CONFIG: invalid prewarm job: job is for node "acl-a"/,
    );
    assert.equal(secretReads, 0);
    assert.equal((await readJob(attacker, 'acl-c', misrouted)).attemptsMade, 1);
  });
});
