/**
 * Every source's fixtures parsed to the expected PushEvent over a real HTTP server, and the
 * rejection variants (wrong content type, missing/wrong credentials, truncated, malformed,
 * stale) answered with the right status and code while `onPush` is never called.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EVENTS_METRIC, type PushEvent, WebhookErrorCodes } from '../../../operator/src/webhooks/index.js';
import { hmacSha256Hex } from '../../../operator/src/webhooks/secrets.js';
import { errorCode, fixture, fixtureJson, type Harness, NOW_ISO, startHarness } from './helpers.js';

const ACR_SECRET = 'acr-secret-0123456789abcdef';
const ECR_KEY = 'ecr-api-key-0123456789abcdef';
const DIST_TOKEN = 'dist-token-0123456789abcdef';
const HARBOR_SECRET = 'harbor-secret-0123456789abcdef';
const HUB_TOKEN = 'hub-token-0123456789abcdef';
const GH_SECRET = 'gh-secret-0123456789abcdef';

let h: Harness;

before(async () => {
  h = await startHarness({
    options: {
      maxBodyBytes: 64 * 1024,
      sources: {
        acr: { secrets: [ACR_SECRET] },
        ecr: {
          header: 'x-prewarm-key',
          secrets: ['old-ecr-key-0123456789abcdef', ECR_KEY],
          accounts: ['210987654321', '112233445566'],
        },
        distribution: { secrets: [DIST_TOKEN] },
        harbor: { secrets: [HARBOR_SECRET] },
        dockerhub: { tokens: [HUB_TOKEN] },
        github: { secrets: [GH_SECRET] },
      },
    },
  });
});
after(() => h.close());

/** Posts, waits for dispatch, returns the status and the events dispatched by this call. */
async function deliver(source: string, body: Buffer | string, opts: Parameters<Harness['post']>[2] = {}) {
  const before = h.events.length;
  const res = await h.post(source, body, opts);
  await h.settle();
  return { res, events: h.events.slice(before) };
}

/** A rejection: the status/code, and nothing dispatched. */
async function rejected(
  source: string,
  body: Buffer | string,
  opts: Parameters<Harness['post']>[2],
  status: number,
  code: string,
) {
  const { res, events } = await deliver(source, body, opts);
  assert.equal(res.status, status, res.body);
  assert.equal(errorCode(res), code, res.body);
  assert.equal(res.json.error?.source, source);
  assert.equal(typeof res.json.error?.message, 'string');
  assert.deepEqual(events, [], 'onPush must not be called for a rejected delivery');
}

const acrAuth = { headers: { Authorization: `Bearer ${ACR_SECRET}` } };
const ecrAuth = { headers: { 'X-Prewarm-Key': ECR_KEY } };
const distAuth = {
  contentType: 'application/vnd.docker.distribution.events.v1+json',
  headers: { Authorization: `Bearer ${DIST_TOKEN}` },
};
const harborAuth = { headers: { Authorization: HARBOR_SECRET } };
const hubAuth = { query: { token: HUB_TOKEN } };
function ghAuth(body: Buffer, event = 'package', secret = GH_SECRET) {
  return {
    headers: {
      'X-GitHub-Event': event,
      'X-GitHub-Delivery': 'a1b2c3d4-0000-11ef-8000-1234567890ab',
      'X-Hub-Signature-256': `sha256=${hmacSha256Hex(secret, body)}`,
    },
  };
}

function ev(e: Omit<PushEvent, 'receivedAt'>): PushEvent {
  return { ...e, receivedAt: NOW_ISO };
}

describe('ACR', () => {
  it('turns a push into one event', async () => {
    const { res, events } = await deliver('acr', fixture('acr/push.json'), acrAuth);
    assert.equal(res.status, 202);
    assert.equal(res.json.accepted, 1);
    assert.deepEqual(events, [
      ev({
        registry: 'contosoml.azurecr.io',
        repository: 'ml/trainer',
        tag: 'v2.4.0',
        digest: 'sha256:9b2a1c4e7f0d3b6a8c5e2f1d0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b',
        mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
        source: 'acr',
        eventId: '5d0c8f2a-6b1e-4c1f-9a57-0f4e6e1d2b31',
        timestamp: '2024-05-14T09:29:41.518Z',
      }),
    ]);
  });

  it('passes an index push on as one event with the index media type', async () => {
    const { events } = await deliver('acr', fixture('acr/push-index.json'), acrAuth);
    assert.equal(events.length, 1);
    assert.equal(events[0]!.mediaType, 'application/vnd.oci.image.index.v1+json');
    assert.equal(events[0]!.tag, 'latest');
  });

  it('accepts and ignores chart_push and delete', async () => {
    for (const f of ['acr/chart-push.json', 'acr/delete.json']) {
      const { res, events } = await deliver('acr', fixture(f), acrAuth);
      assert.equal(res.status, 202);
      assert.equal(res.json.ignored, 1);
      assert.deepEqual(events, []);
    }
  });

  it('answers a retry of the same event as a duplicate', async () => {
    const body = JSON.stringify({ ...fixtureJson('acr/push.json'), id: 'retry-me-1' });
    const first = await deliver('acr', body, acrAuth);
    const second = await deliver('acr', body, acrAuth);
    assert.equal(first.events.length, 1);
    assert.equal(second.res.status, 202);
    assert.equal(second.res.json.duplicates, 1);
    assert.deepEqual(second.events, []);
  });

  it('rejects missing, wrong and partial secrets with 401', async () => {
    const body = fixture('acr/push.json');
    await rejected('acr', body, {}, 401, WebhookErrorCodes.UNAUTHENTICATED);
    await rejected(
      'acr',
      body,
      { headers: { Authorization: 'Bearer acr-secret-0123456789abcdeX' } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    await rejected(
      'acr',
      body,
      { headers: { Authorization: `Bearer ${ACR_SECRET.slice(0, -1)}` } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    await rejected(
      'acr',
      body,
      { headers: { Authorization: `Basic ${ACR_SECRET}` } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
  });

  it('rejects a wrong content type with 415, before looking at credentials', async () => {
    await rejected(
      'acr',
      fixture('acr/push.json'),
      { contentType: 'text/html' },
      415,
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
    );
    await rejected(
      'acr',
      fixture('acr/push.json'),
      { ...acrAuth, contentType: null },
      415,
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
    );
    await rejected(
      'acr',
      fixture('acr/push.json'),
      { headers: { ...acrAuth.headers, 'Content-Encoding': 'gzip' } },
      415,
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
    );
  });

  it('rejects truncated and malformed bodies with 400', async () => {
    const body = fixture('acr/push.json');
    await rejected('acr', body.subarray(0, body.length - 20), acrAuth, 400, WebhookErrorCodes.MALFORMED);
    await rejected('acr', '[]', acrAuth, 400, WebhookErrorCodes.MALFORMED);
    const bad = fixtureJson('acr/push.json');
    (bad.target as Record<string, unknown>).repository = '../../etc/passwd';
    await rejected('acr', JSON.stringify(bad), acrAuth, 400, WebhookErrorCodes.MALFORMED);
    (bad.target as Record<string, unknown>).repository = 'ml/trainer';
    (bad.target as Record<string, unknown>).digest = 'sha256:XYZ';
    await rejected('acr', JSON.stringify(bad), acrAuth, 400, WebhookErrorCodes.MALFORMED);
    const noHost = fixtureJson('acr/push.json');
    delete noHost.request;
    await rejected('acr', JSON.stringify(noHost), acrAuth, 400, WebhookErrorCodes.MALFORMED);
  });

  it('rejects an event outside the replay window with 400 STALE', async () => {
    const old = { ...fixtureJson('acr/push.json'), id: 'old-1', timestamp: '2024-05-14T07:00:00Z' };
    await rejected('acr', JSON.stringify(old), acrAuth, 400, WebhookErrorCodes.STALE);
    const future = { ...fixtureJson('acr/push.json'), id: 'future-1', timestamp: '2024-05-14T10:00:00Z' };
    await rejected('acr', JSON.stringify(future), acrAuth, 400, WebhookErrorCodes.STALE);
  });
});

describe('ECR via EventBridge API destination', () => {
  it('derives the registry from account and region', async () => {
    const { res, events } = await deliver('ecr', fixture('ecr/push.json'), ecrAuth);
    assert.equal(res.status, 202);
    assert.deepEqual(events, [
      ev({
        registry: '210987654321.dkr.ecr.eu-west-1.amazonaws.com',
        repository: 'platform/api',
        tag: '2024.05.14-1',
        digest: 'sha256:7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d',
        source: 'ecr',
        eventId: '4e7d1c2a-9b3f-8e6d-5c4b-3a2f1e0d9c8b',
        timestamp: '2024-05-14T09:30:12.000Z',
      }),
    ]);
  });

  it('accepts the older of two rotated keys, and uses amazonaws.com.cn in China', async () => {
    const { events } = await deliver('ecr', fixture('ecr/push-china.json'), {
      headers: { 'x-prewarm-key': 'old-ecr-key-0123456789abcdef' },
    });
    assert.equal(events.length, 0, 'an untagged push (no image-tag) is not forwarded by default');
    const tagged = fixtureJson('ecr/push-china.json');
    tagged.id = 'china-tagged';
    (tagged.detail as Record<string, unknown>)['image-tag'] = 'v1';
    const r = await deliver('ecr', JSON.stringify(tagged), ecrAuth);
    assert.equal(r.events[0]?.registry, '112233445566.dkr.ecr.cn-north-1.amazonaws.com.cn');
  });

  it('ignores DELETE and FAILURE and non-ECR events', async () => {
    for (const body of [
      fixture('ecr/delete.json'),
      fixture('ecr/push-failed.json'),
      JSON.stringify({ ...fixtureJson('ecr/push.json'), source: 'aws.s3' }),
    ]) {
      const { res, events } = await deliver('ecr', body, ecrAuth);
      assert.equal(res.status, 202);
      assert.equal(res.json.ignored, 1);
      assert.deepEqual(events, []);
    }
  });

  it('refuses accounts not on the allow-list with 403', async () => {
    await rejected(
      'ecr',
      JSON.stringify({ ...fixtureJson('ecr/push.json'), account: '999999999999' }),
      ecrAuth,
      403,
      WebhookErrorCodes.FORBIDDEN,
    );
  });

  it('rejects missing/wrong keys, wrong content type, truncation and staleness', async () => {
    const body = fixture('ecr/push.json');
    await rejected('ecr', body, {}, 401, WebhookErrorCodes.UNAUTHENTICATED);
    await rejected(
      'ecr',
      body,
      { headers: { 'X-Prewarm-Key': ACR_SECRET } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    await rejected(
      'ecr',
      body,
      { ...ecrAuth, contentType: 'application/x-www-form-urlencoded' },
      415,
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
    );
    await rejected('ecr', body.subarray(0, 100), ecrAuth, 400, WebhookErrorCodes.MALFORMED);
    await rejected(
      'ecr',
      JSON.stringify({ ...fixtureJson('ecr/push.json'), region: 'eu west' }),
      ecrAuth,
      400,
      WebhookErrorCodes.MALFORMED,
    );
    // EventBridge retries for 24 h, so the ECR window is a day, not an hour.
    const day = await deliver(
      'ecr',
      JSON.stringify({ ...fixtureJson('ecr/push.json'), id: 'ecr-hours-old', time: '2024-05-14T01:00:00Z' }),
      ecrAuth,
    );
    assert.equal(day.events.length, 1);
    await rejected(
      'ecr',
      JSON.stringify({ ...fixtureJson('ecr/push.json'), id: 'ecr-days-old', time: '2024-05-12T09:00:00Z' }),
      ecrAuth,
      400,
      WebhookErrorCodes.STALE,
    );
  });
});

describe('CNCF distribution', () => {
  it('keeps the tagged manifest push, ignores the blob push and the pull', async () => {
    const { res, events } = await deliver(
      'distribution',
      fixture('distribution/push-manifest.json'),
      distAuth,
    );
    assert.equal(res.status, 202);
    assert.deepEqual(
      { accepted: res.json.accepted, ignored: res.json.ignored, duplicates: res.json.duplicates },
      { accepted: 1, ignored: 2, duplicates: 0 },
    );
    assert.deepEqual(events, [
      ev({
        registry: 'registry.internal:5000',
        repository: 'team/web',
        tag: '1.8.2',
        digest: 'sha256:a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90',
        mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
        source: 'distribution',
        eventId: '7d4e2a91-3b5c-4d6e-9f0a-1b2c3d4e5f6a',
        timestamp: '2024-05-14T09:30:05.342Z',
      }),
    ]);
  });

  it('turns an index push (children by digest + tagged index) into one event', async () => {
    const { res, events } = await deliver('distribution', fixture('distribution/push-index.json'), distAuth);
    assert.equal(res.json.ignored, 2);
    assert.equal(events.length, 1);
    assert.equal(events[0]!.tag, '1.9.0');
    assert.equal(events[0]!.mediaType, 'application/vnd.oci.image.index.v1+json');
    assert.equal(
      events[0]!.digest,
      'sha256:d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3',
    );
  });

  it('accepts a pull-only envelope and dispatches nothing', async () => {
    const { res, events } = await deliver('distribution', fixture('distribution/pull-only.json'), distAuth);
    assert.equal(res.status, 202);
    assert.equal(res.json.ignored, 1);
    assert.deepEqual(events, []);
  });

  it('drops stale events inside an envelope but acknowledges it (distribution would retry forever)', async () => {
    const env = fixtureJson('distribution/push-manifest.json');
    const events = env.events as Record<string, unknown>[];
    events[1] = { ...events[1], id: 'stale-in-envelope', timestamp: '2024-05-14T06:00:00Z' };
    const r = await deliver('distribution', JSON.stringify(env), distAuth);
    assert.equal(r.res.status, 202);
    assert.equal(r.res.json.stale, 1);
    assert.deepEqual(r.events, []);
  });

  it('drops a push event without a timestamp as stale: a replay with its times cut out cannot move a tag', async () => {
    const env = fixtureJson('distribution/push-manifest.json');
    const events = env.events as Record<string, unknown>[];
    const { timestamp: _dropped, ...undated } = events[1]!;
    events[1] = { ...undated, id: 'undated-in-envelope' };
    const r = await deliver('distribution', JSON.stringify(env), distAuth);
    assert.equal(r.res.status, 202, 'acknowledged: distribution would retry a 4xx forever');
    assert.equal(r.res.json.stale, 1);
    assert.equal(r.res.json.accepted, 0);
    assert.deepEqual(r.events, []);
  });

  it('rejects unauthenticated, wrong-type, truncated and malformed envelopes', async () => {
    const body = fixture('distribution/push-manifest.json');
    await rejected(
      'distribution',
      body,
      { contentType: distAuth.contentType },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    await rejected(
      'distribution',
      body,
      { ...distAuth, headers: { Authorization: `Bearer ${HUB_TOKEN}` } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    await rejected(
      'distribution',
      body,
      { ...distAuth, contentType: 'text/plain' },
      415,
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
    );
    await rejected(
      'distribution',
      body.subarray(0, body.length / 2),
      distAuth,
      400,
      WebhookErrorCodes.MALFORMED,
    );
    await rejected('distribution', '{"events": {}}', distAuth, 400, WebhookErrorCodes.MALFORMED);
    await rejected(
      'distribution',
      '{"events": [{"action": "push", "timestamp": "2024-05-14T09:30:00Z", "target": {"tag": "x", "repository": "UPPER/case"}, "id": "1"}]}',
      distAuth,
      400,
      WebhookErrorCodes.MALFORMED,
    );
  });
});

describe('Harbor', () => {
  it('parses the Default format, registry from resource_url', async () => {
    const { events } = await deliver('harbor', fixture('harbor/push-default.json'), harborAuth);
    assert.equal(events.length, 1);
    const e = events[0]!;
    assert.match(e.eventId, /^d-[0-9a-f]{64}$/);
    assert.deepEqual(e, {
      registry: 'harbor.acme.example',
      repository: 'payments/ledger',
      tag: '3.2.1',
      digest: 'sha256:e5e5e5e5d4d4d4d4c3c3c3c3b2b2b2b2a1a1a1a1f0f0f0f0e9e9e9e9d8d8d8d8',
      source: 'harbor',
      eventId: e.eventId,
      timestamp: '2024-05-14T09:30:05.000Z',
      receivedAt: NOW_ISO,
    });
    const again = await deliver('harbor', fixture('harbor/push-default.json'), harborAuth);
    assert.equal(again.res.json.duplicates, 1, 'the id of an id-less payload must be stable across retries');
  });

  it('parses the CloudEvents format', async () => {
    const { events } = await deliver('harbor', fixture('harbor/push-cloudevents.json'), {
      ...harborAuth,
      contentType: 'application/cloudevents+json',
    });
    assert.equal(events.length, 1);
    assert.equal(events[0]!.repository, 'payments/gateway');
    assert.equal(events[0]!.tag, 'edge');
    assert.equal(events[0]!.eventId, 'ce-0e7c5a31-98d2-4b1f-a6e0-5f4c3b2a1d0e-0');
  });

  it('treats a digest in `tag` as untagged, ignores pulls', async () => {
    const byDigest = await deliver('harbor', fixture('harbor/push-by-digest.json'), harborAuth);
    assert.equal(byDigest.res.json.ignored, 1);
    assert.deepEqual(byDigest.events, []);
    const pull = await deliver('harbor', fixture('harbor/pull.json'), harborAuth);
    assert.equal(pull.res.json.ignored, 1);
    assert.deepEqual(pull.events, []);
  });

  it('rejects bad auth, content type, truncation, staleness', async () => {
    const body = fixture('harbor/push-default.json');
    await rejected('harbor', body, {}, 401, WebhookErrorCodes.UNAUTHENTICATED);
    await rejected(
      'harbor',
      body,
      { headers: { Authorization: 'harbor-secret' } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    await rejected(
      'harbor',
      body,
      { ...harborAuth, contentType: 'text/xml' },
      415,
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
    );
    await rejected('harbor', body.subarray(0, 50), harborAuth, 400, WebhookErrorCodes.MALFORMED);
    await rejected(
      'harbor',
      JSON.stringify({ ...fixtureJson('harbor/push-default.json'), occur_at: 1715600000 }),
      harborAuth,
      400,
      WebhookErrorCodes.STALE,
    );
  });
});

describe('Docker Hub', () => {
  it('turns a push into an event without digest', async () => {
    const { events } = await deliver('dockerhub', fixture('dockerhub/push.json'), hubAuth);
    assert.equal(events.length, 1);
    const e = events[0]!;
    assert.deepEqual(e, {
      registry: 'docker.io',
      repository: 'acmecorp/worker',
      tag: 'nightly',
      source: 'dockerhub',
      eventId: e.eventId,
      timestamp: '2024-05-14T09:30:11.000Z',
      receivedAt: NOW_ISO,
    });
    assert.equal('digest' in e, false);
  });

  it('rejects a missing or wrong token in the query, bad bodies, stale pushes', async () => {
    const body = fixture('dockerhub/push.json');
    await rejected('dockerhub', body, {}, 401, WebhookErrorCodes.UNAUTHENTICATED);
    await rejected(
      'dockerhub',
      body,
      { query: { token: 'hub-token-0123456789abcdeF' } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    await rejected(
      'dockerhub',
      body,
      { ...hubAuth, contentType: 'text/plain' },
      415,
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
    );
    await rejected('dockerhub', body.subarray(0, 30), hubAuth, 400, WebhookErrorCodes.MALFORMED);
    await rejected(
      'dockerhub',
      '{"push_data":{"tag":"x","pushed_at":1715679011},"repository":{}}',
      hubAuth,
      400,
      WebhookErrorCodes.MALFORMED,
    );
    const old = fixtureJson('dockerhub/push.json');
    (old.push_data as Record<string, unknown>).pushed_at = 1715000000;
    await rejected('dockerhub', JSON.stringify(old), hubAuth, 400, WebhookErrorCodes.STALE);
  });
});

describe('GitHub package events (GHCR)', () => {
  it('turns a container package version into a lower-cased GHCR event', async () => {
    const body = fixture('github/package-published.json');
    const { res, events } = await deliver('github', body, ghAuth(body));
    assert.equal(res.status, 202);
    assert.equal(events.length, 1);
    const e = events[0]!;
    assert.match(e.eventId, /^b-[0-9a-f]{64}$/);
    assert.deepEqual(e, {
      registry: 'ghcr.io',
      repository: 'acme-corp/inference-server',
      tag: 'v0.9.3',
      digest: 'sha256:1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c',
      mediaType: 'application/vnd.oci.image.index.v1+json',
      source: 'github',
      eventId: e.eventId,
      // The version's year-1 dates mean "unknown": the package's updated_at stands in.
      timestamp: '2024-05-14T09:30:14.000Z',
      receivedAt: NOW_ISO,
    });
  });

  it('ignores npm packages and answers pings, both signed', async () => {
    for (const [file, kind] of [
      ['github/package-npm.json', 'package'],
      ['github/ping.json', 'ping'],
    ] as const) {
      const body = fixture(file);
      const { res, events } = await deliver('github', body, ghAuth(body, kind));
      assert.equal(res.status, 202, res.body);
      assert.equal(res.json.ignored, 1);
      assert.deepEqual(events, []);
    }
  });

  it('rejects unsigned, wrongly signed, tampered and malformed-signature deliveries with 401', async () => {
    const body = fixture('github/package-published.json');
    const { headers } = ghAuth(body);
    await rejected(
      'github',
      body,
      { headers: { 'X-GitHub-Event': 'package' } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    await rejected(
      'github',
      body,
      ghAuth(body, 'package', 'not-the-secret-0123456789'),
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    const tampered = Buffer.from(body.toString('utf8').replace('v0.9.3', 'v6.6.6'));
    await rejected('github', tampered, { headers }, 401, WebhookErrorCodes.UNAUTHENTICATED);
    await rejected(
      'github',
      body,
      { headers: { ...headers, 'X-Hub-Signature-256': `sha1=${'0'.repeat(40)}` } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    const ping = fixture('github/ping.json');
    await rejected(
      'github',
      ping,
      { headers: { 'X-GitHub-Event': 'ping' } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
  });

  it('rejects form-encoded deliveries (415) and signed-but-truncated bodies (400)', async () => {
    const body = fixture('github/package-published.json');
    await rejected(
      'github',
      body,
      { ...ghAuth(body), contentType: 'application/x-www-form-urlencoded' },
      415,
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
    );
    const cut = body.subarray(0, 200);
    await rejected('github', cut, ghAuth(cut), 400, WebhookErrorCodes.MALFORMED);
  });
});

describe('metrics', () => {
  it('counts events per source and outcome, deliveries per source and status', async () => {
    assert.ok((await h.counter(EVENTS_METRIC, { source: 'acr', outcome: 'dispatched' })) >= 2);
    assert.ok((await h.counter(EVENTS_METRIC, { source: 'acr', outcome: 'duplicate' })) >= 1);
    assert.ok((await h.counter(EVENTS_METRIC, { source: 'distribution', outcome: 'ignored' })) >= 5);
    assert.ok((await h.counter(EVENTS_METRIC, { source: 'distribution', outcome: 'stale' })) >= 1);
    assert.ok((await h.counter('kprw_webhook_deliveries_total', { source: 'github', status: '401' })) >= 5);
    assert.ok((await h.counter('kprw_webhook_deliveries_total', { source: 'harbor', status: '415' })) >= 1);
  });
});
