/**
 * Artifact Registry / GCR via Pub/Sub push: the fixtures' base64 notifications parsed to
 * PushEvents; the push OIDC token verified with `jose` against a JWKS made in the test
 * (issuer, audience, expiry, service account), inline or served by a real JWKS endpoint on
 * 127.0.0.1, and the shared query token. OIDC without a service-account allow-list is
 * refused at start: a real Google token of any other service account must get 401.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';
import { Registry } from 'prom-client';
import { isPrewarmError } from '../../../oci/src/errors.js';
import {
  createWebhookHandler,
  MemoryDedupStore,
  silentLogger,
  WebhookErrorCodes,
} from '../../../operator/src/webhooks/index.js';
import { errorCode, fixture, fixtureJson, type Harness, NOW, NOW_ISO, startHarness } from './helpers.js';

const AUDIENCE = 'https://prewarm.acme.example/webhooks/gcr';
const SA = 'registry-push@acme-ml.iam.gserviceaccount.com';
const TOKEN = 'gcr-token-0123456789abcdef';

type Key = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];
let key: Key;
let otherKey: Key;
let jwk: JWK;

async function jwt(
  claims: Record<string, unknown> = {},
  k: Key = key,
  kid = 'k1',
  iat = NOW / 1000,
): Promise<string> {
  // Claims given by the caller override the defaults (a wrong aud or iss, say).
  return new SignJWT({
    iss: 'https://accounts.google.com',
    aud: AUDIENCE,
    sub: '112233445566778899000',
    email: SA,
    email_verified: true,
    iat,
    exp: iat + 3600,
    ...claims,
  })
    .setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' })
    .sign(k);
}

before(async () => {
  ({ privateKey: key, publicKey: jwk } = await generateKeyPair('RS256').then(async (p) => ({
    privateKey: p.privateKey,
    publicKey: { ...(await exportJWK(p.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' },
  })));
  otherKey = (await generateKeyPair('RS256')).privateKey;
});

describe('GCR with OIDC and token', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness({
      options: {
        sources: {
          gcr: {
            tokens: [TOKEN],
            oidc: { jwks: { keys: [jwk] }, audience: AUDIENCE, serviceAccountEmails: [SA] },
            subscriptions: ['projects/acme-ml/subscriptions/kube-prewarm'],
          },
        },
      },
    });
  });
  after(() => h.close());

  const authed = async (claims?: Record<string, unknown>) => ({
    query: { token: TOKEN },
    headers: { Authorization: `Bearer ${await jwt(claims)}` },
  });

  it('turns an Artifact Registry INSERT with tag into one event', async () => {
    const r = await h.post('gcr', fixture('gcr/insert-tag.json'), await authed());
    assert.equal(r.status, 202, r.body);
    await h.settle();
    assert.deepEqual(h.events, [
      {
        registry: 'europe-west4-docker.pkg.dev',
        repository: 'acme-ml/images/trainer',
        tag: 'v7',
        digest: 'sha256:5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d',
        source: 'gcr',
        eventId: '10452370834511238',
        timestamp: '2024-05-14T09:30:20.386Z',
        receivedAt: NOW_ISO,
      },
    ]);
  });

  it('accepts a digest-only INSERT (untagged: not forwarded) and ignores DELETE', async () => {
    const digestOnly = await h.post('gcr', fixture('gcr/insert-digest.json'), await authed());
    assert.equal(digestOnly.status, 202);
    assert.equal(digestOnly.json.ignored, 1);
    const del = await h.post('gcr', fixture('gcr/delete.json'), await authed());
    assert.equal(del.json.ignored, 1);
    await h.settle();
    assert.equal(h.events.length, 1);
  });

  async function refused(
    body: Buffer | string,
    opts: Parameters<Harness['post']>[2],
    status: number,
    code: string,
  ): Promise<void> {
    const before = h.events.length;
    const r = await h.post('gcr', body, opts);
    assert.equal(r.status, status, r.body);
    assert.equal(errorCode(r), code, r.body);
    await h.settle();
    assert.equal(h.events.length, before);
  }

  it('rejects missing/invalid tokens and JWTs', async () => {
    const body = fixture('gcr/insert-tag.json');
    const good = await authed();
    await refused(body, { headers: good.headers }, 401, WebhookErrorCodes.UNAUTHENTICATED);
    await refused(
      body,
      { query: { token: `${TOKEN}x` }, headers: good.headers },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    await refused(body, { query: good.query }, 401, WebhookErrorCodes.UNAUTHENTICATED);
    const cases: [string, string][] = [
      ['wrong key', await jwt({}, otherKey)],
      ['unknown kid', await jwt({}, key, 'k2')],
      ['wrong audience', await jwt({ aud: 'https://elsewhere.example' })],
      ['wrong issuer', await jwt({ iss: 'https://evil.example' })],
      ['expired', await jwt({}, key, 'k1', NOW / 1000 - 7200)],
      ['not yet valid', await jwt({ nbf: NOW / 1000 + 3600 })],
      ['garbage', 'a.b.c'],
    ];
    for (const [what, token] of cases) {
      const r = await h.post('gcr', body, {
        query: good.query,
        headers: { Authorization: `Bearer ${token}` },
      });
      assert.equal(r.status, 401, `${what}: ${r.body}`);
    }
    const unsignedToken = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ iss: 'https://accounts.google.com', aud: AUDIENCE, email: SA })).toString('base64url')}.`;
    await refused(
      body,
      { query: good.query, headers: { Authorization: `Bearer ${unsignedToken}` } },
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
  });

  it('refuses tokens of other service accounts (401) and other subscriptions (403)', async () => {
    await refused(
      fixture('gcr/insert-tag.json'),
      await authed({ email: 'someone@acme-ml.iam.gserviceaccount.com' }),
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    await refused(
      fixture('gcr/insert-tag.json'),
      await authed({ email_verified: false }),
      401,
      WebhookErrorCodes.UNAUTHENTICATED,
    );
    const other = { ...fixtureJson('gcr/insert-tag.json'), subscription: 'projects/x/subscriptions/y' };
    await refused(JSON.stringify(other), await authed(), 403, WebhookErrorCodes.FORBIDDEN);
  });

  it('rejects bad data, truncation, staleness and content type', async () => {
    const msg = (data: unknown, extra: Record<string, unknown> = {}) => {
      const p = fixtureJson('gcr/insert-tag.json');
      const m = p.message as Record<string, unknown>;
      return JSON.stringify({ ...p, message: { ...m, messageId: 'x', data, ...extra } });
    };
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64');
    const opts = await authed();
    await refused(msg('%%% not base64'), opts, 400, WebhookErrorCodes.MALFORMED);
    await refused(msg(Buffer.from('not json').toString('base64')), opts, 400, WebhookErrorCodes.MALFORMED);
    await refused(msg(b64({ action: 'INSERT', tag: 'trainer:v1' })), opts, 400, WebhookErrorCodes.MALFORMED);
    await refused(
      msg(b64({ action: 'INSERT', tag: 'europe-west4-docker.pkg.dev/acme-ml/images/Trainer:v1' })),
      opts,
      400,
      WebhookErrorCodes.MALFORMED,
    );
    await refused(msg(b64({ action: 'INSERT' })), opts, 400, WebhookErrorCodes.MALFORMED);
    await refused(
      msg(b64({ action: 'INSERT', tag: 'gcr.io/p/i:v1' }), {
        publishTime: '2024-05-10T00:00:00Z',
        publish_time: undefined,
      }),
      opts,
      400,
      WebhookErrorCodes.STALE,
    );
    const whole = fixture('gcr/insert-tag.json');
    await refused(whole.subarray(0, 120), opts, 400, WebhookErrorCodes.MALFORMED);
    await refused(
      whole,
      { ...opts, contentType: 'application/octet-stream' },
      415,
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
    );
  });
});

describe('GCR with the token only', () => {
  it('accepts the shared token without a JWT', async () => {
    const h = await startHarness({ options: { sources: { gcr: { tokens: [TOKEN] } } } });
    try {
      const r = await h.post('gcr', fixture('gcr/insert-tag.json'), { query: { token: TOKEN } });
      assert.equal(r.status, 202);
      assert.equal((await h.post('gcr', fixture('gcr/insert-tag.json'), {})).status, 401);
    } finally {
      await h.close();
    }
  });
});

describe('GCR OIDC against a JWKS endpoint', () => {
  let jwksServer: Server;
  let jwksUrl: string;
  let jwksHits = 0;
  before(async () => {
    jwksServer = createServer((_req, res) => {
      jwksHits++;
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => jwksServer.listen(0, '127.0.0.1', r));
    jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/oauth2/v3/certs`;
  });
  after(() => new Promise<void>((r) => jwksServer.close(() => r())));

  it('accepts the configured service account and answers 401 to a real token of a foreign one', async () => {
    const h = await startHarness({
      options: {
        sources: { gcr: { oidc: { jwksUrl, audience: AUDIENCE, serviceAccountEmails: [SA] } } },
      },
    });
    try {
      const ok = await h.post('gcr', fixture('gcr/insert-tag.json'), {
        headers: { Authorization: `Bearer ${await jwt()}` },
      });
      assert.equal(ok.status, 202, ok.body);
      assert.ok(jwksHits >= 1, 'the keys came from the JWKS endpoint');
      // Signed by the same (Google) key, right issuer and audience: only the account differs.
      const foreign = await jwt({ email: 'attacker@evil-project.iam.gserviceaccount.com' });
      const r = await h.post('gcr', fixture('gcr/insert-tag.json'), {
        headers: { Authorization: `Bearer ${foreign}` },
      });
      assert.equal(r.status, 401, r.body);
      assert.equal(errorCode(r), WebhookErrorCodes.UNAUTHENTICATED);
      await h.settle();
      assert.equal(h.events.length, 1);
    } finally {
      await h.close();
    }
  });

  it('refuses to start with OIDC but no service-account allow-list', () => {
    const deps = {
      onPush: async () => {},
      dedup: new MemoryDedupStore(),
      logger: silentLogger(),
      metrics: new Registry(),
    };
    for (const serviceAccountEmails of [undefined, [], ['']]) {
      assert.throws(
        () =>
          createWebhookHandler(deps, {
            sources: {
              gcr: {
                tokens: [TOKEN],
                oidc: { jwksUrl, audience: AUDIENCE, serviceAccountEmails } as never,
              },
            },
          }),
        (err: unknown) =>
          isPrewarmError(err, 'PW_ERR_INVALID_CONFIG') && /serviceAccountEmails/.test((err as Error).message),
        JSON.stringify(serviceAccountEmails),
      );
    }
  });
});
