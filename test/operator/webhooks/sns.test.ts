/**
 * ECR events over SNS HTTPS: signatures (SignatureVersion 1 and 2) made in the test with a
 * key/certificate it generates, verified by the handler against the configured
 * certificate; subscription confirmation without outbound calls unless allow-listed; the
 * SigningCertURL fetched only from an allow-listed host. The "SNS endpoint" the handler may
 * call is a real HTTPS server on 127.0.0.1 with its own certificate.
 */
import assert from 'node:assert/strict';
import { sign } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { WebhookErrorCodes } from '../../../operator/src/webhooks/index.js';
import { Cleanup, makeTempDir } from '../../harness/tmp.js';
import { errorCode, fixture, fixtureJson, type Harness, NOW_ISO, startHarness } from './helpers.js';
import { type KeyAndCert, localhostTls, signingCert } from './tls-fixtures.js';

const TOPIC = 'arn:aws:sns:eu-west-1:210987654321:ecr-pushes';
const ECR_KEY = 'ecr-api-key-0123456789abcdef';
const CERT_PATH = '/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem';

type Msg = Record<string, unknown>;

/**
 * The string SNS signs, written here from the AWS documentation independently of the
 * handler's implementation, so a canonicalisation bug cannot cancel itself out.
 */
function canonical(m: Msg): string {
  const keys =
    m.Type === 'Notification'
      ? ['Message', 'MessageId', 'Subject', 'Timestamp', 'TopicArn', 'Type']
      : ['Message', 'MessageId', 'SubscribeURL', 'Timestamp', 'Token', 'TopicArn', 'Type'];
  return keys
    .filter((k) => m[k] !== undefined)
    .map((k) => `${k}\n${String(m[k])}\n`)
    .join('');
}

function signed(m: Msg, key: KeyAndCert, version: '1' | '2' = '2'): string {
  const msg = { ...m, SignatureVersion: version };
  const sig = sign(version === '1' ? 'sha1' : 'sha256', Buffer.from(canonical(msg)), key.keyPem).toString(
    'base64',
  );
  return JSON.stringify({ ...msg, Signature: sig });
}

const snsHeaders = (type: string) => ({
  contentType: 'text/plain; charset=UTF-8',
  headers: { 'x-amz-sns-message-type': type, 'x-amz-sns-topic-arn': TOPIC },
});

/** A real HTTPS server recording every request path. */
async function startHttpsEndpoint(
  tls: KeyAndCert,
  pem: string,
): Promise<{ server: Server; host: string; hits: string[] }> {
  const hits: string[] = [];
  const server = createServer({ key: tls.keyPem, cert: tls.certPem }, (req, res) => {
    hits.push(req.url ?? '');
    if (req.url === CERT_PATH) {
      res.writeHead(200, { 'Content-Type': 'application/x-pem-file' });
      res.end(pem);
    } else if (req.url?.startsWith('/?Action=ConfirmSubscription')) {
      res.writeHead(200, { 'Content-Type': 'text/xml' });
      res.end('<ConfirmSubscriptionResponse/>');
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, host: `127.0.0.1:${(server.address() as AddressInfo).port}`, hits };
}

const cleanup = new Cleanup();
let signer: KeyAndCert;
let otherSigner: KeyAndCert;
let expired: KeyAndCert;
let tls: KeyAndCert;

before(async () => {
  const dir = await makeTempDir('webhook-sns', cleanup);
  signer = await signingCert(dir, 'sns', '20240101000000Z', '20340101000000Z');
  otherSigner = await signingCert(dir, 'other', '20240101000000Z', '20340101000000Z');
  expired = await signingCert(dir, 'expired', '20230101000000Z', '20240301000000Z');
  tls = await localhostTls(dir);
});
after(() => cleanup.run());

describe('SNS notifications with configured certificates', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness({
      options: {
        sources: {
          ecrSns: {
            topicArns: [TOPIC],
            certificates: [expired.certPem, signer.certPem],
            accounts: ['210987654321'],
          },
          ecr: { header: 'x-prewarm-key', secrets: [ECR_KEY] },
        },
      },
    });
  });
  after(() => h.close());

  const notification = (): Msg => fixtureJson('ecr-sns/notification.json');

  it('verifies a SignatureVersion 2 notification and dispatches the ECR event', async () => {
    const r = await h.post('ecr-sns', signed(notification(), signer, '2'), snsHeaders('Notification'));
    assert.equal(r.status, 202, r.body);
    await h.settle();
    assert.deepEqual(h.events, [
      {
        registry: '210987654321.dkr.ecr.eu-west-1.amazonaws.com',
        repository: 'platform/api',
        tag: '2024.05.14-1',
        digest: 'sha256:7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d',
        source: 'ecr-sns',
        eventId: '4e7d1c2a-9b3f-8e6d-5c4b-3a2f1e0d9c8b',
        timestamp: '2024-05-14T09:30:12.000Z',
        receivedAt: NOW_ISO,
      },
    ]);
  });

  it('dedups the same ECR event arriving over the API destination too', async () => {
    const r = await h.post('ecr', fixture('ecr/push.json'), { headers: { 'x-prewarm-key': ECR_KEY } });
    assert.equal(r.json.duplicates, 1);
    await h.settle();
    assert.equal(h.events.length, 1);
  });

  it('verifies SignatureVersion 1 (SHA1) and a Subject in the signed string', async () => {
    const m = notification();
    const inner = JSON.parse(m.Message as string) as Msg;
    m.Message = JSON.stringify({ ...inner, id: 'sns-v1-event' });
    m.MessageId = 'msg-v1';
    m.Subject = 'ECR push';
    const r = await h.post('ecr-sns', signed(m, signer, '1'), snsHeaders('Notification'));
    assert.equal(r.status, 202, r.body);
    assert.equal(r.json.accepted, 1);
  });

  async function refused(body: string, status: number, code: string, type = 'Notification'): Promise<void> {
    const before = h.events.length;
    const r = await h.post('ecr-sns', body, snsHeaders(type));
    assert.equal(r.status, status, r.body);
    assert.equal(errorCode(r), code, r.body);
    await h.settle();
    assert.equal(h.events.length, before, 'nothing dispatched');
  }

  it('rejects unsigned, wrongly signed, tampered, expired-certificate and unknown-version messages with 401', async () => {
    const fresh = (id: string): Msg => {
      const m = notification();
      m.Message = JSON.stringify({ ...(JSON.parse(m.Message as string) as Msg), id });
      return m;
    };
    const unsigned = fresh('u1');
    delete unsigned.Signature;
    await refused(JSON.stringify(unsigned), 401, WebhookErrorCodes.UNAUTHENTICATED);
    await refused(signed(fresh('u2'), otherSigner), 401, WebhookErrorCodes.UNAUTHENTICATED);
    await refused(signed(fresh('u3'), expired), 401, WebhookErrorCodes.UNAUTHENTICATED);
    const tampered = JSON.parse(signed(fresh('u4'), signer)) as Msg;
    tampered.Message = (tampered.Message as string).replace('2024.05.14-1', 'evil');
    await refused(JSON.stringify(tampered), 401, WebhookErrorCodes.UNAUTHENTICATED);
    const v3 = JSON.parse(signed(fresh('u5'), signer)) as Msg;
    v3.SignatureVersion = '3';
    await refused(JSON.stringify(v3), 401, WebhookErrorCodes.UNAUTHENTICATED);
    const sigOnly = JSON.parse(signed(fresh('u6'), signer)) as Msg;
    sigOnly.Signature = 'not base64 at all!!';
    await refused(JSON.stringify(sigOnly), 401, WebhookErrorCodes.UNAUTHENTICATED);
  });

  it('refuses other topics (403), stale messages (400), bad types and truncation (400), other content types (415)', async () => {
    await refused(
      signed({ ...notification(), TopicArn: 'arn:aws:sns:eu-west-1:210987654321:other' }, signer),
      403,
      WebhookErrorCodes.FORBIDDEN,
    );
    await refused(
      signed({ ...notification(), Timestamp: '2024-05-14T07:00:00.000Z' }, signer),
      400,
      WebhookErrorCodes.STALE,
    );
    await refused(
      signed(notification(), signer),
      400,
      WebhookErrorCodes.MALFORMED,
      'SubscriptionConfirmation',
    );
    await refused(signed({ ...notification(), Type: 'Surprise' }, signer), 400, WebhookErrorCodes.MALFORMED);
    const whole = signed(notification(), signer);
    await refused(whole.slice(0, whole.length - 10), 400, WebhookErrorCodes.MALFORMED);
    const r = await h.post('ecr-sns', whole, { contentType: 'application/xml' });
    assert.equal(r.status, 415);
  });

  it('refuses before the body a missing or foreign topic header, and a body whose topic differs from it', async () => {
    const body = signed(notification(), signer);
    const none = await h.post('ecr-sns', body, { contentType: 'text/plain' });
    assert.equal(none.status, 401, none.body);
    const other = await h.post('ecr-sns', body, {
      contentType: 'text/plain',
      headers: { 'x-amz-sns-topic-arn': 'arn:aws:sns:eu-west-1:210987654321:other' },
    });
    assert.equal(other.status, 403, other.body);
    const topics = [TOPIC, 'arn:aws:sns:eu-west-1:210987654321:second'];
    const h2 = await startHarness({
      options: { sources: { ecrSns: { topicArns: topics, certificates: [signer.certPem] } } },
    });
    try {
      const mismatch = await h2.post('ecr-sns', body, {
        contentType: 'text/plain',
        headers: { 'x-amz-sns-message-type': 'Notification', 'x-amz-sns-topic-arn': topics[1]! },
      });
      assert.equal(mismatch.status, 400, mismatch.body);
      assert.equal(errorCode(mismatch), WebhookErrorCodes.MALFORMED);
      await h2.settle();
      assert.deepEqual(h2.events, []);
    } finally {
      await h2.close();
    }
  });

  it('ignores authentic notifications that are not ECR events', async () => {
    const r = await h.post(
      'ecr-sns',
      signed({ ...notification(), MessageId: 'plain', Message: 'hello, not JSON' }, signer),
      snsHeaders('Notification'),
    );
    assert.equal(r.status, 202);
    assert.equal(r.json.ignored, 1);
  });
});

describe('SNS subscription confirmation', () => {
  it('only logs the confirmation when auto-confirm is off: no outbound request', async () => {
    const endpoint = await startHttpsEndpoint(tls, signer.certPem);
    const h = await startHarness({
      options: { sources: { ecrSns: { topicArns: [TOPIC], certificates: [signer.certPem] } } },
    });
    try {
      const m = fixtureJson('ecr-sns/subscription-confirmation.json');
      m.SubscribeURL = `https://${endpoint.host}/?Action=ConfirmSubscription&Token=abc`;
      const r = await h.post('ecr-sns', signed(m, signer, '1'), snsHeaders('SubscriptionConfirmation'));
      assert.equal(r.status, 202, r.body);
      assert.match(String(r.json.note), /confirm it by hand/);
      assert.deepEqual(endpoint.hits, []);
    } finally {
      await h.close();
      endpoint.server.close();
    }
  });

  it('visits an allow-listed SubscribeURL, refuses others without calling them', async () => {
    const endpoint = await startHttpsEndpoint(tls, signer.certPem);
    const h = await startHarness({
      options: {
        sources: {
          ecrSns: {
            topicArns: [TOPIC],
            certificates: [signer.certPem],
            autoConfirm: { allowedHosts: [endpoint.host], ca: tls.certPem },
          },
        },
      },
    });
    try {
      const m = fixtureJson('ecr-sns/subscription-confirmation.json');
      m.SubscribeURL = `https://${endpoint.host}/?Action=ConfirmSubscription&Token=abc`;
      const r = await h.post('ecr-sns', signed(m, signer, '1'), snsHeaders('SubscriptionConfirmation'));
      assert.equal(r.status, 202, r.body);
      assert.equal(r.json.note, 'subscription confirmed');
      assert.deepEqual(endpoint.hits, ['/?Action=ConfirmSubscription&Token=abc']);

      for (const url of [
        `http://${endpoint.host}/?Action=ConfirmSubscription`,
        'https://sns.eu-west-1.amazonaws.com.evil.example/?Action=ConfirmSubscription',
        `https://user:pw@${endpoint.host}/?Action=ConfirmSubscription`,
      ]) {
        const bad = await h.post(
          'ecr-sns',
          signed({ ...m, SubscribeURL: url }, signer, '1'),
          snsHeaders('SubscriptionConfirmation'),
        );
        assert.equal(bad.status, 403, `${url}: ${bad.body}`);
      }
      assert.equal(endpoint.hits.length, 1);
    } finally {
      await h.close();
      endpoint.server.close();
    }
  });
});

describe('SigningCertURL fetching', () => {
  it('fetches the certificate only from an allow-listed host and https SNS-shaped path, once', async () => {
    const endpoint = await startHttpsEndpoint(tls, signer.certPem);
    const h = await startHarness({
      options: {
        sources: {
          ecrSns: {
            topicArns: [TOPIC],
            certificateFetch: { allowedHosts: [endpoint.host], ca: tls.certPem },
          },
        },
      },
    });
    try {
      const m = fixtureJson('ecr-sns/notification.json');
      m.SigningCertURL = `https://${endpoint.host}${CERT_PATH}`;
      const r = await h.post('ecr-sns', signed(m, signer), snsHeaders('Notification'));
      assert.equal(r.status, 202, r.body);
      await h.settle();
      assert.equal(h.events.length, 1);
      const again = await h.post(
        'ecr-sns',
        signed({ ...m, MessageId: 'second' }, signer),
        snsHeaders('Notification'),
      );
      assert.equal(again.status, 202);
      assert.deepEqual(endpoint.hits, [CERT_PATH], 'fetched once, then cached');

      const forged = await h.post(
        'ecr-sns',
        signed({ ...m, MessageId: 'third' }, otherSigner),
        snsHeaders('Notification'),
      );
      assert.equal(forged.status, 401);
      for (const url of [
        `https://evil.example${CERT_PATH}`,
        `http://${endpoint.host}${CERT_PATH}`,
        `https://${endpoint.host}/other.pem`,
        `https://${endpoint.host}${CERT_PATH}?x=1`,
      ]) {
        const bad = await h.post(
          'ecr-sns',
          signed({ ...m, MessageId: url, SigningCertURL: url }, signer),
          snsHeaders('Notification'),
        );
        assert.equal(bad.status, 403, `${url}: ${bad.body}`);
      }
      assert.deepEqual(endpoint.hits, [CERT_PATH], 'no other URL was ever requested');
    } finally {
      await h.close();
      endpoint.server.close();
    }
  });
});
