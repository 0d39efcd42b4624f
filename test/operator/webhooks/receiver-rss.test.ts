/**
 * Issue 11's memory attack against the real receiver process: 400 unauthenticated senders
 * at once, each sending headers and then a little of a large body, slowly, reconnecting
 * whenever they are cut off, for longer than the body timeout. Most target the sources
 * that can only authenticate after reading the body (GitHub's HMAC, SNS signatures); the
 * rest send wrong credentials to header-authenticated sources. Before the caps the
 * operator buffered up to 1 MiB per sender (RSS 97 → 449 MiB at 400 senders).
 *
 * The receiver's RSS is read from /proc/<pid>/status (VmRSS sampled during the attack,
 * VmHWM, the kernel's peak, at the end) and must stay under a bound derived from its caps:
 * baseline + maxInflightBodyBytes + maxConnections × 64 KiB (socket, parser and request
 * objects) + 64 MiB of allocator/GC slack. That is a memory assertion, not a timing one: the
 * attack's duration only has to outlast the body timeout.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type RedisHandle, startRedis } from '../../harness/redis.js';
import { Cleanup, makeTempDir } from '../../harness/tmp.js';
import { type ReceiverProcess, startReceiver } from './receiver-process.js';
import { signingCert } from './tls-fixtures.js';

const MiB = 1024 * 1024;
const SENDERS = 400;
const MAX_CONNECTIONS = 256;
const MAX_INFLIGHT_BODY_BYTES = 16 * MiB;
const BODY_TIMEOUT_MS = 4000;
/** Longer than the body timeout, so cut-off senders reconnect and the pressure holds. */
const ATTACK_MS = 3 * BODY_TIMEOUT_MS;
/** What each sender would like to make the receiver buffer (the old per-request limit). */
const WANTED_BODY_BYTES = MiB;
const CHUNK = 16 * 1024;
const CHUNK_EVERY_MS = 100;
const PER_CONNECTION_OVERHEAD = 64 * 1024;
const SLACK = 64 * MiB;
const TOPIC = 'arn:aws:sns:eu-west-1:210987654321:ecr-pushes';
const CHART_NODE_OPTIONS = '--max-old-space-size=96';

function procStatus(pid: number): { rss: number; hwm: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB$`, 'm').exec(text);
    assert.ok(m, `${key} missing from /proc/${pid}/status`);
    return Number(m[1]) * 1024;
  };
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

const fmt = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;

/** The request head of one attacking sender (all unauthenticated). */
function attackHead(i: number): string {
  const common = ['Host: receiver', 'Content-Type: application/json'];
  switch (i % 4) {
    case 0: // body-authenticated, chunked: no Content-Length to refuse up front
    case 1:
      return [
        'POST /webhooks/github HTTP/1.1',
        ...common,
        'X-GitHub-Event: package',
        `X-Hub-Signature-256: sha256=${'0'.repeat(64)}`,
        'Transfer-Encoding: chunked',
      ].join('\r\n');
    case 2:
      return [
        'POST /webhooks/ecr-sns HTTP/1.1',
        'Host: receiver',
        'Content-Type: text/plain',
        'x-amz-sns-message-type: Notification',
        `x-amz-sns-topic-arn: ${TOPIC}`,
        'Transfer-Encoding: chunked',
      ].join('\r\n');
    default: // header-authenticated, wrong secret, announcing a big body
      return [
        'POST /webhooks/acr HTTP/1.1',
        ...common,
        'Authorization: Bearer not-the-acr-secret-0123456789',
        `Content-Length: ${WANTED_BODY_BYTES}`,
      ].join('\r\n');
  }
}

interface AttackStats {
  attempts: number;
  /** First status line per answered attempt. */
  statuses: Map<string, number>;
  /** Closed (or dropped) without any answer. */
  unanswered: number;
}

/** One sender: connects, sends its head and then a chunk now and then; reconnects when cut off. */
async function attacker(i: number, port: number, until: number, stats: AttackStats): Promise<void> {
  const chunk = Buffer.alloc(CHUNK, 0x20);
  while (Date.now() < until) {
    stats.attempts++;
    await new Promise<void>((resolve) => {
      const sock: Socket = connect({ host: '127.0.0.1', port });
      const head = attackHead(i);
      const chunked = head.includes('Transfer-Encoding: chunked');
      let answer = '';
      let sent = 0;
      let timer: NodeJS.Timeout | undefined;
      const finish = (): void => {
        clearInterval(timer);
        const status = /^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1];
        if (status === undefined) stats.unanswered++;
        else stats.statuses.set(status, (stats.statuses.get(status) ?? 0) + 1);
        resolve();
      };
      sock.on('data', (d: Buffer) => {
        answer += d.toString('latin1');
      });
      sock.on('error', () => {});
      sock.on('close', finish);
      sock.on('connect', () => {
        sock.write(`${head}\r\n\r\n`);
        timer = setInterval(() => {
          if (answer !== '' || sent >= WANTED_BODY_BYTES || Date.now() >= until) {
            sock.destroy();
            return;
          }
          sock.write(
            chunked
              ? Buffer.concat([Buffer.from(`${CHUNK.toString(16)}\r\n`), chunk, Buffer.from('\r\n')])
              : chunk,
          );
          sent += CHUNK;
        }, CHUNK_EVERY_MS);
      });
    });
  }
}

describe('the receiver under 400 slow unauthenticated senders', () => {
  const cleanup = new Cleanup();
  let redis: RedisHandle;
  let receiver: ReceiverProcess;

  before(async () => {
    const dir = await makeTempDir('webhook-rss', cleanup);
    redis = await startRedis();
    cleanup.defer(() => redis.close());
    const sns = await signingCert(dir, 'sns', '20240101000000Z', '20340101000000Z');
    receiver = await startReceiver({
      dir,
      redisUrl: redis.url,
      options: {
        bodyTimeoutMs: BODY_TIMEOUT_MS,
        sources: {
          github: { secrets: ['gh-secret-0123456789abcdef'] },
          ecrSns: { topicArns: [TOPIC], certificates: [sns.certPem] },
          acr: { secrets: ['acr-secret-0123456789abcdef'] },
        },
      },
      // As the chart runs it (webhooks.receiver.nodeOptions).
      nodeFlags: [CHART_NODE_OPTIONS],
      env: {
        KUBE_PREWARM_LOG_LEVEL: 'info',
        KUBE_PREWARM_WEBHOOKS_MAX_CONNECTIONS: String(MAX_CONNECTIONS),
        KUBE_PREWARM_WEBHOOKS_MAX_INFLIGHT_BODY_BYTES: String(MAX_INFLIGHT_BODY_BYTES),
        KUBE_PREWARM_WEBHOOKS_HEADERS_TIMEOUT_MS: '5000',
      },
    });
    cleanup.defer(() => receiver.stop());
  });
  after(() => cleanup.run());

  it('keeps RSS within baseline + caps + slack, far below the 512 MiB container limit', async () => {
    // Warm the paths the attack uses, so the baseline includes their code.
    for (const source of ['github', 'ecr-sns', 'acr']) {
      const r = await fetch(receiver.url(source), {
        method: 'POST',
        headers: { 'Content-Type': source === 'ecr-sns' ? 'text/plain' : 'application/json' },
        body: '{}',
      });
      assert.ok([400, 401, 403].includes(r.status), `${source}: ${r.status}`);
    }
    await sleep(500);
    const baseline = procStatus(receiver.pid);
    const bound = baseline.rss + MAX_INFLIGHT_BODY_BYTES + MAX_CONNECTIONS * PER_CONNECTION_OVERHEAD + SLACK;

    const stats: AttackStats = { attempts: 0, statuses: new Map(), unanswered: 0 };
    const until = Date.now() + ATTACK_MS;
    let maxRss = baseline.rss;
    const sampler = (async () => {
      while (Date.now() < until + 1000) {
        maxRss = Math.max(maxRss, procStatus(receiver.pid).rss);
        await sleep(100);
      }
    })();
    await Promise.all([
      ...Array.from({ length: SENDERS }, (_, i) => attacker(i, receiver.webhooksPort, until, stats)),
      sampler,
    ]);
    const end = procStatus(receiver.pid);
    const metrics = await (await fetch(`http://127.0.0.1:${receiver.httpPort}/metrics`)).text();
    const dropped = Number(/^kprw_webhook_connections_dropped_total (\d+)/m.exec(metrics)?.[1] ?? 0);

    const summary = {
      senders: SENDERS,
      attempts: stats.attempts,
      answered: Object.fromEntries([...stats.statuses].sort()),
      unanswered: stats.unanswered,
      droppedAtAccept: dropped,
      baselineRss: fmt(baseline.rss),
      maxSampledRss: fmt(maxRss),
      peakRssVmHWM: fmt(end.hwm),
      rssAfter: fmt(end.rss),
      bound: fmt(bound),
    };
    console.log(`receiver RSS under attack: ${JSON.stringify(summary)}`);

    // The attack really reached the receiver: every sender connected at least once, and
    // the caps were what answered them.
    assert.ok(stats.attempts >= SENDERS, JSON.stringify(summary));
    const refusedEarly = (stats.statuses.get('401') ?? 0) + (stats.statuses.get('503') ?? 0);
    const cutOff = (stats.statuses.get('413') ?? 0) + (stats.statuses.get('408') ?? 0);
    assert.ok(refusedEarly > 0 && cutOff > 0, JSON.stringify(summary));
    assert.ok(receiver.process.running, `the receiver died:\n${receiver.process.logTail()}`);
    assert.ok(
      maxRss <= bound,
      `sampled RSS ${fmt(maxRss)} over the bound ${fmt(bound)}: ${JSON.stringify(summary)}`,
    );
    assert.ok(
      end.hwm <= bound,
      `peak RSS ${fmt(end.hwm)} over the bound ${fmt(bound)}: ${JSON.stringify(summary)}`,
    );
    assert.ok(bound < 256 * MiB, `the bound itself (${fmt(bound)}) must stay far below the 512 MiB limit`);

    // And it still serves: the probes answer, nothing is left reserved.
    assert.equal((await fetch(`http://127.0.0.1:${receiver.httpPort}/readyz`)).status, 200);
    const inflight = Number(
      /^kprw_webhook_inflight_body_bytes (\d+)/m.exec(
        await (await fetch(`http://127.0.0.1:${receiver.httpPort}/metrics`)).text(),
      )?.[1],
    );
    assert.equal(inflight, 0, 'every body reservation was released');
  });
});
