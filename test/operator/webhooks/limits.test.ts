/**
 * What an unauthenticated or slow sender can make the webhook server hold, over a real
 * HTTP server on 127.0.0.1:
 * - every source that can authenticate from headers or the query refuses a wrong or
 *   missing credential before the body is read (the body is never even sent here, and the
 *   body timeout is two minutes, so only a refusal before reading can answer);
 * - bodies being read hold reservations in one budget: beyond it 503 + Retry-After, and
 *   not-yet-authenticated senders cannot take the authenticated senders' half;
 * - connections beyond maxConnections are closed at accept, and a sender trickling its
 *   headers is cut off by the headers timeout.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { before, describe, it } from 'node:test';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { WebhookErrorCodes } from '../../../operator/src/webhooks/index.js';
import { hmacSha256Hex } from '../../../operator/src/webhooks/secrets.js';
import { waitUntil } from '../../harness/process.js';
import { fixture, NOW, startHarness } from './helpers.js';

const ACR = 'acr-secret-0123456789abcdef';
const GH = 'gh-secret-0123456789abcdef';
const TOPIC = 'arn:aws:sns:eu-west-1:210987654321:ecr-pushes';
const AUDIENCE = 'https://prewarm.example/webhooks/gcr';
const SA = 'push@acme.iam.gserviceaccount.com';
const SNS_PEM_PLACEHOLDER_FREE = { topicArns: [TOPIC], certificateFetch: { allowedHosts: ['sns.invalid'] } };

/**
 * Opens a connection and writes `head` (no body); resolves with the answer once it is
 * complete (by its Content-Length), or with whatever arrived when the server closes or
 * `waitMs` passes.
 */
function headOnly(port: number, head: string, waitMs = 30_000): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect({ host: '127.0.0.1', port });
    let text = '';
    const timer = setTimeout(() => sock.destroy(), waitMs);
    sock.on('data', (d: Buffer) => {
      text += d.toString('utf8');
      const end = text.indexOf('\r\n\r\n');
      const len = /\r\ncontent-length: (\d+)\r\n/i.exec(text);
      if (end >= 0 && len && Buffer.byteLength(text) >= end + 4 + Number(len[1])) sock.destroy();
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(text);
    });
    sock.write(`${head.trim()}\r\n\r\n`);
  });
}

function head(path: string, headers: string[], contentLength = 10_000): string {
  return [`POST ${path} HTTP/1.1`, 'Host: x', `Content-Length: ${contentLength}`, ...headers].join('\r\n');
}

describe('authentication before the body', () => {
  let jwt: string;
  before(async () => {
    const { privateKey } = await generateKeyPair('RS256');
    jwt = await new SignJWT({
      iss: 'https://accounts.google.com',
      aud: AUDIENCE,
      email: 'someone-else@other-project.iam.gserviceaccount.com',
      email_verified: true,
      iat: NOW / 1000,
      exp: NOW / 1000 + 3600,
    })
      .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
      .sign(privateKey);
  });

  it('refuses wrong or missing credentials of every source without waiting for the body', async () => {
    const { publicKey } = await generateKeyPair('RS256');
    const h = await startHarness({
      options: {
        bodyTimeoutMs: 120_000,
        sources: {
          acr: { secrets: [ACR] },
          ecr: { secrets: [ACR] },
          distribution: { secrets: [ACR] },
          harbor: { secrets: [ACR] },
          dockerhub: { tokens: [ACR] },
          gcr: {
            oidc: {
              jwks: { keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256' }] },
              audience: AUDIENCE,
              serviceAccountEmails: [SA],
            },
          },
          github: { secrets: [GH] },
          ecrSns: SNS_PEM_PLACEHOLDER_FREE,
        },
      },
    });
    try {
      const json = 'Content-Type: application/json';
      const cases: [string, string, number][] = [
        ['acr without Authorization', head('/webhooks/acr', [json]), 401],
        ['acr with a wrong secret', head('/webhooks/acr', [json, `Authorization: Bearer ${GH}`]), 401],
        ['ecr without the API key', head('/webhooks/ecr', [json]), 401],
        [
          'distribution with a wrong token',
          head('/webhooks/distribution', [json, `Authorization: Bearer ${GH}`]),
          401,
        ],
        ['harbor without the auth header', head('/webhooks/harbor', [json]), 401],
        ['dockerhub without the token', head('/webhooks/dockerhub', [json]), 401],
        ['dockerhub with a wrong token', head(`/webhooks/dockerhub?token=${GH}`, [json]), 401],
        ['gcr without a JWT', head('/webhooks/gcr', [json]), 401],
        ['gcr with a garbage JWT', head('/webhooks/gcr', [json, 'Authorization: Bearer a.b.c']), 401],
        [
          'gcr with a JWT of an unknown key and a foreign service account',
          head('/webhooks/gcr', [json, `Authorization: Bearer ${jwt}`]),
          401,
        ],
        ['github without a signature', head('/webhooks/github', [json, 'X-GitHub-Event: package']), 401],
        [
          'github with a malformed signature',
          head('/webhooks/github', [json, 'X-Hub-Signature-256: sha1=00']),
          401,
        ],
        ['ecr-sns without a topic header', head('/webhooks/ecr-sns', ['Content-Type: text/plain']), 401],
        [
          'ecr-sns for another topic',
          head('/webhooks/ecr-sns', [
            'Content-Type: text/plain',
            'x-amz-sns-topic-arn: arn:aws:sns:eu-west-1:210987654321:other',
          ]),
          403,
        ],
      ];
      for (const [what, raw, status] of cases) {
        const answer = await headOnly(h.port, raw);
        assert.match(
          answer,
          new RegExp(`^HTTP/1\\.1 ${status} `),
          `${what}: ${answer.slice(0, 300) || '(no answer)'}`,
        );
      }
      assert.equal(h.server.budget.used, 0, 'nothing was ever reserved for a body');
      await h.settle();
      assert.deepEqual(h.events, []);
    } finally {
      await h.close();
    }
  });
});

describe('the body budget', () => {
  it('answers 503 + Retry-After beyond the budget; unauthenticated bodies get only half of it', async () => {
    // 256 KiB in all, 128 KiB for senders not authenticated yet; github bodies may be 64 KiB.
    const h = await startHarness({
      options: {
        maxInflightBodyBytes: 256 * 1024,
        bodyTimeoutMs: 120_000,
        sources: { acr: { secrets: [ACR] }, github: { secrets: [GH] } },
      },
    });
    const held: Socket[] = [];
    try {
      const ghHead = head(
        '/webhooks/github',
        [
          'Content-Type: application/json',
          'X-GitHub-Event: package',
          `X-Hub-Signature-256: sha256=${'0'.repeat(64)}`,
        ],
        64 * 1024,
      );
      // Two slow github senders: each announces 64 KiB, sends a little, and waits.
      for (let i = 0; i < 2; i++) {
        const sock = connect({ host: '127.0.0.1', port: h.port });
        sock.on('error', () => {});
        sock.write(`${ghHead}\r\n\r\n{"partial":`);
        held.push(sock);
      }
      await waitUntil(
        'two github bodies reserved',
        async () => h.server.budget.usedUnauthenticated === 128 * 1024,
        {
          timeoutMs: 30_000,
        },
      );
      const third = await headOnly(h.port, ghHead);
      assert.match(third, /^HTTP\/1\.1 503 /, third);
      assert.match(third, /\r\nretry-after: 5\r\n/i);
      assert.match(third, new RegExp(WebhookErrorCodes.UNAVAILABLE));

      // An authenticated sender still has its half.
      const acr = await h.post('acr', fixture('acr/push.json'), {
        headers: { Authorization: `Bearer ${ACR}` },
      });
      assert.equal(acr.status, 202, acr.body);

      for (const s of held) s.destroy();
      await waitUntil('reservations released', async () => h.server.budget.used === 0, { timeoutMs: 30_000 });
      const ping = fixture('github/ping.json');
      const signed = await h.post('github', ping, {
        headers: { 'X-GitHub-Event': 'ping', 'X-Hub-Signature-256': `sha256=${hmacSha256Hex(GH, ping)}` },
      });
      assert.equal(signed.status, 202, signed.body);
    } finally {
      for (const s of held) s.destroy();
      await h.close();
    }
  });

  it('refuses a body-authenticated source’s body over its own, smaller limit before reading it', async () => {
    const h = await startHarness({ options: { sources: { github: { secrets: [GH] } } } });
    try {
      const big = Buffer.alloc(64 * 1024 + 1, 0x20);
      const r = await h.post('github', big, {
        headers: { 'X-GitHub-Event': 'package', 'X-Hub-Signature-256': `sha256=${hmacSha256Hex(GH, big)}` },
      });
      assert.equal(r.status, 413, r.body);
    } finally {
      await h.close();
    }
  });
});

describe('connections', () => {
  it('closes connections beyond maxConnections at accept, and counts them', async () => {
    const h = await startHarness({
      options: { maxConnections: 3, sources: { acr: { secrets: [ACR] } } },
    });
    const open: Socket[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const s = connect({ host: '127.0.0.1', port: h.port });
        s.on('error', () => {});
        await new Promise((r) => s.once('connect', r));
        s.write('POST /webhooks/acr HTTP/1.1\r\n');
        open.push(s);
      }
      await waitUntil('3 connections seen', async () => (await gauge(h, 'kprw_webhook_connections')) === 3, {
        timeoutMs: 30_000,
      });
      const fourth = await headOnly(h.port, head('/webhooks/acr', ['Content-Type: application/json']));
      assert.equal(fourth, '', 'closed without an answer');
      assert.equal(await h.counter('kprw_webhook_connections_dropped_total', {}), 1);
      for (const s of open) s.destroy();
      await waitUntil('connections closed', async () => (await gauge(h, 'kprw_webhook_connections')) === 0, {
        timeoutMs: 30_000,
      });
      const ok = await h.post('acr', fixture('acr/push.json'), {
        headers: { Authorization: `Bearer ${ACR}` },
      });
      assert.equal(ok.status, 202);
    } finally {
      for (const s of open) s.destroy();
      await h.close();
    }
  });

  it('cuts off a sender that trickles its headers (slowloris)', async () => {
    const h = await startHarness({
      options: { headersTimeoutMs: 1000, sources: { acr: { secrets: [ACR] } } },
    });
    try {
      const sock = connect({ host: '127.0.0.1', port: h.port });
      sock.on('error', () => {});
      let answer = '';
      sock.on('data', (d: Buffer) => {
        answer += d.toString('utf8');
      });
      const closed = new Promise<void>((r) => sock.once('close', () => r()));
      sock.write('POST /webhooks/acr HTTP/1.1\r\nHost: x\r\n');
      // One header byte at a time, forever (until the server gives up).
      const trickle = setInterval(() => {
        if (!sock.destroyed) sock.write('X');
      }, 100);
      let gaveUp = false;
      const guard = setTimeout(() => {
        gaveUp = true;
        sock.destroy();
      }, 60_000);
      await closed;
      clearInterval(trickle);
      clearTimeout(guard);
      assert.equal(gaveUp, false, 'the server never closed the trickling connection');
      assert.match(answer, /^HTTP\/1\.1 408 |^$/, answer);
    } finally {
      await h.close();
    }
  });
});

async function gauge(h: Awaited<ReturnType<typeof startHarness>>, name: string): Promise<number> {
  const metric = h.registry.getSingleMetric(name);
  if (metric === undefined) return Number.NaN;
  return (await metric.get()).values[0]?.value ?? 0;
}
