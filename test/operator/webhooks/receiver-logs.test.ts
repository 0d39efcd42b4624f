/**
 * The real receiver process (`kube-prewarm webhooks`) end to end, at debug level:
 * every source's happy path and its failure paths (wrong credential, malformed body,
 * stale event), an SNS subscription confirmation (its SubscribeURL carries a token), a
 * configuration reload that rotates a secret, and a broken configuration file that
 * contains a secret. Afterwards:
 * - no configured secret or token, no JWT, no signature, no SubscribeURL token and nothing
 *   from the broken file appears anywhere in the process's log;
 * - the accepted events are in the Redis push stream the operator consumes, and their
 *   dedup keys in Redis;
 * - the rotated secret took effect without a restart, and the broken file changed nothing.
 */
import assert from 'node:assert/strict';
import { sign } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import type { WebhookOptions } from '../../../operator/src/webhooks/index.js';
import { hmacSha256Hex } from '../../../operator/src/webhooks/secrets.js';
import { waitUntil } from '../../harness/process.js';
import { type RedisHandle, startRedis } from '../../harness/redis.js';
import { Cleanup, freePort, makeTempDir } from '../../harness/tmp.js';
import { fixtureJson } from './helpers.js';
import { type ReceiverProcess, startReceiver } from './receiver-process.js';
import { type KeyAndCert, signingCert } from './tls-fixtures.js';

const S = {
  acr: 'acr-log-secret-5f1e0c2d9b8a7f6e',
  acrRotated: 'acr-log-secret-rotated-3c2b1a0f',
  ecr: 'ecr-log-apikey-8d7c6b5a4f3e2d1c',
  gcrToken: 'gcr-log-token-1a2b3c4d5e6f7a8b',
  distribution: 'dist-log-token-9f8e7d6c5b4a3f2e',
  harbor: 'harbor-log-secret-0e1d2c3b4a5f6e7d',
  dockerhub: 'hub-log-token-6b5a4f3e2d1c0b9a',
  github: 'gh-log-secret-2d3c4b5a6f7e8d9c',
};
const TOPIC = 'arn:aws:sns:eu-west-1:210987654321:ecr-pushes';
const SA = 'registry-push@acme-ml.iam.gserviceaccount.com';
const SUBSCRIBE_TOKEN = 'subscribe-token-7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b';
const BROKEN_FILE_SECRET = 'broken-file-secret-4a3b2c1d0e9f8a7b';

type Json = Record<string, unknown>;
const nowIso = (): string => new Date().toISOString();
const nowUnix = (): number => Math.floor(Date.now() / 1000);
const hourAgoIso = (): string => new Date(Date.now() - 2 * 3600_000).toISOString();

describe('the receiver process: logs, Redis stream, reload', () => {
  const cleanup = new Cleanup();
  let redis: RedisHandle;
  let conn: Redis;
  let receiver: ReceiverProcess;
  let signer: KeyAndCert;
  let jwks: Server;
  let jwksUrl = '';
  let signJwt: (email: string) => Promise<string>;
  let closedPort = 0;
  /** Every credential-like string the test sends or configures. */
  const secrets = new Set<string>([...Object.values(S), SUBSCRIBE_TOKEN, BROKEN_FILE_SECRET]);
  const audience = 'https://prewarm.example/webhooks/gcr';

  const options = (acrSecrets: string[], autoConfirm?: { allowedHosts: string[] }): WebhookOptions => ({
    sources: {
      acr: { secrets: acrSecrets },
      ecr: { header: 'x-prewarm-key', secrets: [S.ecr] },
      ecrSns: {
        topicArns: [TOPIC],
        certificates: [signer.certPem],
        ...(autoConfirm === undefined ? {} : { autoConfirm }),
      },
      gcr: { tokens: [S.gcrToken], oidc: { jwksUrl, audience, serviceAccountEmails: [SA] } },
      distribution: { secrets: [S.distribution] },
      harbor: { secrets: [S.harbor] },
      dockerhub: { tokens: [S.dockerhub] },
      github: { secrets: [S.github] },
    },
  });

  before(async () => {
    const dir = await makeTempDir('webhook-logs', cleanup);
    redis = await startRedis();
    cleanup.defer(() => redis.close());
    conn = new Redis(redis.url, { maxRetriesPerRequest: 3 });
    cleanup.defer(() => conn.disconnect());
    signer = await signingCert(dir, 'sns', '20240101000000Z', '20340101000000Z');
    const { privateKey, publicKey } = await generateKeyPair('RS256');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    jwks = createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => jwks.listen(0, '127.0.0.1', r));
    cleanup.defer(() => new Promise<void>((r) => jwks.close(() => r())));
    jwksUrl = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/certs`;
    signJwt = async (email) => {
      const t = await new SignJWT({
        iss: 'https://accounts.google.com',
        aud: audience,
        email,
        email_verified: true,
        iat: nowUnix(),
        exp: nowUnix() + 3600,
      })
        .setProtectedHeader({ alg: 'RS256', kid: 'k1', typ: 'JWT' })
        .sign(privateKey);
      secrets.add(t);
      return t;
    };
    closedPort = await freePort();
    receiver = await startReceiver({
      dir,
      redisUrl: redis.url,
      options: options([S.acr]),
      env: { KUBE_PREWARM_LOG_LEVEL: 'trace', KUBE_PREWARM_WEBHOOKS_RELOAD_MS: '200' },
    });
    cleanup.defer(() => receiver.stop());
  });
  after(() => cleanup.run());

  const post = async (
    source: string,
    body: string | Buffer,
    headers: Record<string, string>,
    query = '',
  ): Promise<{ status: number; json: Json }> => {
    const r = await fetch(`${receiver.url(source)}${query}`, { method: 'POST', headers, body });
    const text = await r.text();
    let json: Json = {};
    try {
      json = JSON.parse(text) as Json;
    } catch {
      // asserted by status
    }
    return { status: r.status, json };
  };
  const json = { 'Content-Type': 'application/json' };

  // Payload builders: fixtures with fresh times and unique ids.
  const acr = (id: string, ts = nowIso()) =>
    JSON.stringify({ ...fixtureJson('acr/push.json'), id, timestamp: ts });
  const ecrEvent = (id: string, time = nowIso()): Json => ({ ...fixtureJson('ecr/push.json'), id, time });
  const snsSigned = (m: Json): string => {
    const keys =
      m.Type === 'Notification'
        ? ['Message', 'MessageId', 'Subject', 'Timestamp', 'TopicArn', 'Type']
        : ['Message', 'MessageId', 'SubscribeURL', 'Timestamp', 'Token', 'TopicArn', 'Type'];
    const msg = { ...m, SignatureVersion: '2' };
    const canonical = keys
      .filter((k) => (msg as Json)[k] !== undefined)
      .map((k) => `${k}\n${String((msg as Json)[k])}\n`)
      .join('');
    const signature = sign('sha256', Buffer.from(canonical), signer.keyPem).toString('base64');
    secrets.add(signature);
    return JSON.stringify({ ...msg, Signature: signature });
  };
  const snsNotification = (id: string, ts = nowIso()) =>
    snsSigned({
      ...fixtureJson('ecr-sns/notification.json'),
      MessageId: `m-${id}`,
      Timestamp: ts,
      Message: JSON.stringify(ecrEvent(id)),
    });
  const snsConfirmation = () =>
    snsSigned({
      ...fixtureJson('ecr-sns/subscription-confirmation.json'),
      Token: SUBSCRIBE_TOKEN,
      SubscribeURL: `https://127.0.0.1:${closedPort}/?Action=ConfirmSubscription&TopicArn=${TOPIC}&Token=${SUBSCRIBE_TOKEN}`,
      Timestamp: nowIso(),
    });
  const snsHeaders = (type: string) => ({
    'Content-Type': 'text/plain; charset=UTF-8',
    'x-amz-sns-message-type': type,
    'x-amz-sns-topic-arn': TOPIC,
  });
  const gcr = (id: string, ts = nowIso()) => {
    const p = fixtureJson('gcr/insert-tag.json');
    const m = p.message as Json;
    return JSON.stringify({
      ...p,
      message: { ...m, messageId: id, message_id: id, publishTime: ts, publish_time: ts },
    });
  };
  const distribution = (id: string, ts = nowIso()) => {
    const env = fixtureJson('distribution/push-manifest.json');
    const events = env.events as Json[];
    return JSON.stringify({ events: [{ ...events[1], id, timestamp: ts }] });
  };
  const harbor = (tag: string, occurAt = nowUnix()) => {
    const p = fixtureJson('harbor/push-default.json');
    const data = p.event_data as Json;
    const res = (data.resources as Json[])[0]!;
    return JSON.stringify({ ...p, occur_at: occurAt, event_data: { ...data, resources: [{ ...res, tag }] } });
  };
  const dockerhub = (tag: string, pushedAt = nowUnix()) => {
    const p = fixtureJson('dockerhub/push.json');
    return JSON.stringify({ ...p, push_data: { ...(p.push_data as Json), tag, pushed_at: pushedAt } });
  };
  const github = (tag: string, updatedAt = nowIso()): Buffer => {
    const p = fixtureJson('github/package-published.json');
    const pkg = p.package as Json;
    const v = pkg.package_version as Json;
    const meta = v.container_metadata as Json;
    return Buffer.from(
      JSON.stringify({
        ...p,
        package: {
          ...pkg,
          updated_at: updatedAt,
          package_version: {
            ...v,
            container_metadata: { ...meta, tag: { ...(meta.tag as Json), name: tag } },
          },
        },
      }),
    );
  };
  /** Posts one GitHub body (built once: its times come from the clock) signed with `secret`. */
  const postGithub = (body: Buffer, secret = S.github) => post('github', body, ghHeaders(body, secret));
  const ghHeaders = (body: Buffer, secret = S.github) => {
    const sig = `sha256=${hmacSha256Hex(secret, body)}`;
    secrets.add(sig.slice(7));
    return { ...json, 'X-GitHub-Event': 'package', 'X-GitHub-Delivery': 'd-1', 'X-Hub-Signature-256': sig };
  };

  it('accepts every source and refuses its failure paths, without a secret in any log line', async () => {
    const acrAuth = { ...json, Authorization: `Bearer ${S.acr}` };
    const ecrAuth = { ...json, 'x-prewarm-key': S.ecr };
    const distAuth = {
      'Content-Type': 'application/vnd.docker.distribution.events.v1+json',
      Authorization: `Bearer ${S.distribution}`,
    };
    const harborAuth = { ...json, Authorization: S.harbor };
    const gcrAuth = { ...json, Authorization: `Bearer ${await signJwt(SA)}` };
    const gcrQuery = `?token=${S.gcrToken}`;
    const hubQuery = `?token=${S.dockerhub}`;

    const expectations: [string, Promise<{ status: number; json: Json }>, number][] = [
      // Happy paths: one event each.
      ['acr', post('acr', acr('log-acr-1'), acrAuth), 202],
      ['ecr', post('ecr', JSON.stringify(ecrEvent('log-ecr-1')), ecrAuth), 202],
      ['ecr-sns', post('ecr-sns', snsNotification('log-sns-1'), snsHeaders('Notification')), 202],
      ['gcr', post('gcr', gcr('log-gcr-1'), gcrAuth, gcrQuery), 202],
      ['distribution', post('distribution', distribution('log-dist-1'), distAuth), 202],
      ['harbor', post('harbor', harbor('log-1'), harborAuth), 202],
      ['dockerhub', post('dockerhub', dockerhub('log-1'), json, hubQuery), 202],
      ['github', postGithub(github('log-1')), 202],
      // Wrong credentials (a real secret of another source, so it is in the request).
      ['acr wrong', post('acr', acr('log-acr-2'), { ...json, Authorization: `Bearer ${S.ecr}` }), 401],
      ['ecr wrong', post('ecr', JSON.stringify(ecrEvent('x')), { ...json, 'x-prewarm-key': S.acr }), 401],
      ['gcr wrong token', post('gcr', gcr('x'), gcrAuth, `?token=${S.dockerhub}`), 401],
      [
        'gcr foreign account',
        post(
          'gcr',
          gcr('x'),
          { ...json, Authorization: `Bearer ${await signJwt('evil@x.iam.gserviceaccount.com')}` },
          gcrQuery,
        ),
        401,
      ],
      [
        'distribution wrong',
        post('distribution', distribution('x'), { ...distAuth, Authorization: S.harbor }),
        401,
      ],
      ['harbor wrong', post('harbor', harbor('x'), { ...json, Authorization: S.github }), 401],
      ['dockerhub wrong', post('dockerhub', dockerhub('x'), json, `?token=${S.gcrToken}`), 401],
      ['github wrong', postGithub(github('x'), S.harbor), 401],
      [
        'sns wrong signature',
        post(
          'ecr-sns',
          JSON.stringify({ ...(JSON.parse(snsNotification('x')) as Json), Message: '{"tampered":true}' }),
          snsHeaders('Notification'),
        ),
        401,
      ],
      // Malformed bodies from authenticated senders.
      ['acr malformed', post('acr', '{"action":"push"', acrAuth), 400],
      ['gcr malformed', post('gcr', '{"message":{}}', gcrAuth, gcrQuery), 400],
      ['github malformed', post('github', Buffer.from('[1'), ghHeaders(Buffer.from('[1'))), 400],
      // Stale events.
      ['acr stale', post('acr', acr('log-acr-old', hourAgoIso()), acrAuth), 400],
      [
        'ecr-sns stale',
        post('ecr-sns', snsNotification('log-sns-old', hourAgoIso()), snsHeaders('Notification')),
        400,
      ],
      ['github stale', postGithub(github('old', hourAgoIso())), 400],
      ['dockerhub stale', post('dockerhub', dockerhub('old', nowUnix() - 7200), json, hubQuery), 400],
      ['harbor stale', post('harbor', harbor('old', nowUnix() - 7200), harborAuth), 400],
      // Subscription confirmation with autoConfirm off: noted, never visited, never logged.
      ['sns confirmation', post('ecr-sns', snsConfirmation(), snsHeaders('SubscriptionConfirmation')), 202],
    ];
    // All sent at once; every answer is collected before any is judged.
    const answers = await Promise.all(
      expectations.map(([, pending]) =>
        pending.catch((err: unknown) => ({ status: -1, json: { requestFailed: String(err) } as Json })),
      ),
    );
    expectations.forEach(([what, , status], i) => {
      assert.equal(answers[i]!.status, status, `${what}: ${JSON.stringify(answers[i]!.json)}`);
    });

    // The accepted events reached the push stream the operator's leader reads.
    const stream = 'kprw:operator:push-events';
    await waitUntil('8 events in the push stream', async () => (await conn.xlen(stream)) >= 8, {
      timeoutMs: 30_000,
      process: receiver.process,
    });
    const entries = await conn.xrange(stream, '-', '+');
    const sources = entries
      .map(([, f]) => (JSON.parse(f[f.indexOf('e') + 1]!) as { source: string }).source)
      .sort();
    assert.deepEqual(sources, [
      'acr',
      'distribution',
      'dockerhub',
      'ecr',
      'ecr-sns',
      'gcr',
      'github',
      'harbor',
    ]);
    const dedupKeys = await conn.keys('kprw:webhook:dedup:*');
    assert.ok(dedupKeys.length >= 8, `dedup keys: ${dedupKeys.join(', ')}`);
    for (const k of dedupKeys)
      assert.ok((await conn.ttl(k)) > 3600, `${k} lives at least as long as the window`);

    // Rotate the ACR secret and turn on autoConfirm (to a closed port): applied without a restart.
    await receiver.writeConfig(options([S.acrRotated], { allowedHosts: [`127.0.0.1:${closedPort}`] }));
    await waitUntil(
      'the rotated ACR secret is accepted',
      async () =>
        (
          await post('acr', acr(`log-rot-${Date.now()}`), {
            ...json,
            Authorization: `Bearer ${S.acrRotated}`,
          })
        ).status === 202,
      { timeoutMs: 30_000, process: receiver.process },
    );
    assert.equal((await post('acr', acr('log-rot-old'), acrAuth)).status, 401, 'the old secret is gone');
    const confirm = await post('ecr-sns', snsConfirmation(), snsHeaders('SubscriptionConfirmation'));
    assert.equal(confirm.status, 503, 'visiting the SubscribeURL failed (closed port): retry later');

    // A broken file (with a secret in it) is refused and changes nothing.
    await receiver.writeConfig(`sources:\n  acr: { secrets: ["${BROKEN_FILE_SECRET}"\n  harbor: [\n`);
    await waitUntil(
      'the broken file refused',
      async () => (await readFile(receiver.logPath, 'utf8')).includes('webhook configuration refused'),
      { timeoutMs: 30_000, process: receiver.process },
    );
    assert.equal(
      (
        await post('acr', acr(`log-after-broken-${Date.now()}`), {
          ...json,
          Authorization: `Bearer ${S.acrRotated}`,
        })
      ).status,
      202,
    );
    assert.equal(
      (await post('acr', acr('log-broken'), { ...json, Authorization: `Bearer ${BROKEN_FILE_SECRET}` }))
        .status,
      401,
    );

    await receiver.stop();
    const log = await readFile(receiver.logPath, 'utf8');
    const lines = log.split('\n').filter(Boolean);
    // The log really covers the paths above (a silent logger would pass the checks below).
    const count = (msg: string) => lines.filter((l) => l.includes(`"msg":"${msg}`)).length;
    assert.ok(
      count('webhook delivery accepted') >= 10,
      `accepted lines: ${count('webhook delivery accepted')}`,
    );
    assert.ok(
      count('webhook delivery rejected') >= 15,
      `rejected lines: ${count('webhook delivery rejected')}`,
    );
    assert.ok(count('SNS subscription confirmation received') === 1);
    assert.ok(count('visiting the SNS SubscribeURL failed') === 1);
    assert.ok(count('webhook configuration reloaded') >= 1);
    const confirmation = lines.find((l) => l.includes('SNS subscription confirmation received'))!;
    assert.match(confirmation, new RegExp(`"topicArn":"${TOPIC}"`));
    assert.match(confirmation, new RegExp(`"subscribeHost":"127.0.0.1:${closedPort}"`));

    const leaks = [...secrets].filter((s) => log.includes(s));
    assert.deepEqual(
      leaks,
      [],
      `secrets in the receiver's log:\n${lines.filter((l) => leaks.some((s) => l.includes(s))).join('\n')}`,
    );
    assert.ok(!/Token=/i.test(log), 'no SubscribeURL query in the log');
  });
});
