/**
 * Amazon ECR events delivered by SNS over HTTPS (EventBridge rule → SNS topic → HTTPS
 * subscription to `<basePath>/ecr-sns`). SNS posts `text/plain` JSON documents of three
 * types, each signed by SNS:
 *
 * - `SubscriptionConfirmation`: visited automatically only when `autoConfirm.allowedHosts`
 *   lists its host; otherwise only noted in the log by topic ARN and URL host. The
 *   SubscribeURL and Token are credentials (they confirm the subscription) and are never
 *   logged.
 * - `Notification`: `Message` is the EventBridge event (see ecr.ts).
 * - `UnsubscribeConfirmation`: logged, ignored.
 *
 * Signature: SignatureVersion 1 (SHA1withRSA) or 2 (SHA256withRSA) over the canonical
 * `Key\nValue\n` string, verified against certificates you configure (download the one
 * SigningCertURL names, once). The payload's SigningCertURL is never fetched unless
 * `certificateFetch.allowedHosts` lists its host. Raw message delivery must be off: raw
 * messages carry no signature and are refused.
 *
 * Before the body is read, the `x-amz-sns-topic-arn` header SNS always sends must name an
 * accepted topic (anyone can forge it; it only keeps scanners from making us buffer
 * bodies), and the signed body's TopicArn must then equal it.
 */
import { verify, X509Certificate } from 'node:crypto';
import { checkKnownKeys, invalidConfig } from '../config.js';
import { forbidden, malformed, unauthenticated, WebhookError, WebhookErrorCodes } from '../errors.js';
import { headerValue } from '../http-body.js';
import { parseEcrEvent } from './ecr.js';
import { OutboundFetcher, type OutboundOptions } from './outbound.js';
import {
  emptyOutcome,
  freshTimestamp,
  type HeaderContext,
  isObject,
  type JsonObject,
  optString,
  parseJsonObject,
  reqString,
  type SourceContext,
  type SourceOutcome,
  type WebhookSource,
} from './source.js';

export interface EcrSnsSourceOptions {
  /** Topic ARNs whose messages are accepted (required); any other topic gets 403. */
  topicArns: string[];
  /**
   * PEM certificates SNS signs with (the file at the messages' SigningCertURL). Required
   * unless `certificateFetch` is set. A message verifies if any of them verifies it.
   */
  certificates?: string[];
  /** Allow fetching SigningCertURL at request time, only from these hosts. Off by default. */
  certificateFetch?: OutboundOptions;
  /** Visit SubscribeURL on SubscriptionConfirmation, only for these hosts. Off by default. */
  autoConfirm?: OutboundOptions;
  /** AWS account ids whose ECR events are accepted; others get 403. Default: any. */
  accounts?: string[];
  /** Replay window, seconds (applies to the SNS Timestamp and the event time). Default: the router's. */
  maxEventAgeSeconds?: number;
  /**
   * Largest body, bytes. Default 64 KiB: the body is read before its signature can be
   * checked, and an SNS message carrying an ECR event is a few KiB.
   */
  maxBodyBytes?: number;
}

type SnsType = 'Notification' | 'SubscriptionConfirmation' | 'UnsubscribeConfirmation';

/** Fields of the string to sign, in the order SNS signs them. */
const SIGNED_FIELDS: Record<SnsType, readonly string[]> = {
  Notification: ['Message', 'MessageId', 'Subject', 'Timestamp', 'TopicArn', 'Type'],
  SubscriptionConfirmation: [
    'Message',
    'MessageId',
    'SubscribeURL',
    'Timestamp',
    'Token',
    'TopicArn',
    'Type',
  ],
  UnsubscribeConfirmation: ['Message', 'MessageId', 'SubscribeURL', 'Timestamp', 'Token', 'TopicArn', 'Type'],
};
/** Fields that may be absent from the string to sign. */
const OPTIONAL_FIELDS = new Set(['Subject']);

const CERT_URL_PATH = /^\/SimpleNotificationService-[0-9a-f]{32}\.pem$/;
const MAX_FETCHED_CERTS = 16;

/** The canonical string SNS signs for `msg` (exported for tests that sign fixtures). */
export function snsStringToSign(msg: JsonObject): string {
  const type = msg.Type as SnsType;
  const fields = SIGNED_FIELDS[type];
  if (fields === undefined)
    throw malformed(`Type ${JSON.stringify(String(msg.Type).slice(0, 40))} is not an SNS message type`);
  let s = '';
  for (const k of fields) {
    const v = msg[k];
    if (v === undefined || v === null) {
      if (OPTIONAL_FIELDS.has(k)) continue;
      throw malformed(`${k} is missing`);
    }
    if (typeof v !== 'string') throw malformed(`${k} must be a string`);
    s += `${k}\n${v}\n`;
  }
  return s;
}

export function ecrSnsSource(opts: EcrSnsSourceOptions): WebhookSource {
  if (!Array.isArray(opts.topicArns) || opts.topicArns.length === 0)
    throw invalidConfig('ecrSns needs at least one topic ARN');
  const certs = (opts.certificates ?? []).map((pem, i) => {
    try {
      return new X509Certificate(pem);
    } catch (err) {
      throw invalidConfig(`ecrSns.certificates[${i}] is not a PEM certificate: ${(err as Error).message}`);
    }
  });
  for (const k of ['certificateFetch', 'autoConfirm'] as const) {
    const o = opts[k];
    if (o === undefined) continue;
    checkKnownKeys(o, ['allowedHosts', 'ca', 'timeoutMs'], `sources.ecrSns.${k}`);
    if (!Array.isArray(o.allowedHosts) || o.allowedHosts.length === 0) {
      throw invalidConfig(`ecrSns.${k}.allowedHosts must list at least one host`);
    }
  }
  const certFetcher =
    opts.certificateFetch === undefined ? undefined : new OutboundFetcher(opts.certificateFetch);
  const confirmer = opts.autoConfirm === undefined ? undefined : new OutboundFetcher(opts.autoConfirm);
  if (certs.length === 0 && certFetcher === undefined) {
    throw invalidConfig(
      'ecrSns needs certificates (PEM) or certificateFetch.allowedHosts to verify SNS signatures',
    );
  }
  const fetched = new Map<string, X509Certificate>();
  const topics = new Set(opts.topicArns);

  const keysFor = async (msg: JsonObject, ctx: SourceContext): Promise<X509Certificate[]> => {
    if (certFetcher === undefined) return certs;
    const raw = optString(msg, 'SigningCertURL', '$');
    if (raw === undefined) return certs;
    const url = certFetcher.check(raw, 'SigningCertURL');
    if (!CERT_URL_PATH.test(url.pathname) || url.search !== '')
      throw forbidden('SigningCertURL does not look like an SNS certificate URL');
    const key = url.href;
    let cert = fetched.get(key);
    if (cert === undefined) {
      let pem: string;
      try {
        pem = await certFetcher.getText(url, 16 * 1024, ctx.signal);
        cert = new X509Certificate(pem);
      } catch (err) {
        ctx.log.warn({ err, url: `${url.origin}${url.pathname}` }, 'could not fetch SNS signing certificate');
        throw new WebhookError(
          WebhookErrorCodes.UNAVAILABLE,
          'could not fetch the SNS signing certificate; retry later',
          {
            headers: { 'Retry-After': '30' },
          },
        );
      }
      if (fetched.size >= MAX_FETCHED_CERTS) fetched.delete(fetched.keys().next().value!);
      fetched.set(key, cert);
    }
    return [...certs, cert];
  };

  const verifySignature = async (msg: JsonObject, ctx: SourceContext): Promise<void> => {
    const version = msg.SignatureVersion;
    const sig = msg.Signature;
    if (typeof sig !== 'string' || sig.length === 0)
      throw unauthenticated('SNS message is not signed (raw message delivery is not supported)');
    const algorithm = version === '1' ? 'sha1' : version === '2' ? 'sha256' : undefined;
    if (algorithm === undefined)
      throw unauthenticated(
        `SignatureVersion ${JSON.stringify(String(version).slice(0, 10))} is not supported`,
      );
    const data = Buffer.from(snsStringToSign(msg), 'utf8');
    const sigBytes = Buffer.from(sig, 'base64');
    for (const cert of await keysFor(msg, ctx)) {
      if (!certValidAt(cert, ctx.nowMs)) continue;
      try {
        if (verify(algorithm, data, cert.publicKey, sigBytes)) return;
      } catch {
        // A key of another type or a garbled signature: try the next certificate.
      }
    }
    // Not secret, and what an operator needs after AWS rotates its signing certificate.
    ctx.log.warn(
      {
        signingCertUrl: typeof msg.SigningCertURL === 'string' ? msg.SigningCertURL.slice(0, 300) : undefined,
      },
      'SNS signature did not verify; if AWS rotated its certificate, add the new one to ecrSns.certificates',
    );
    throw unauthenticated('SNS message signature does not verify against any trusted certificate');
  };

  const confirm = async (msg: JsonObject, ctx: SourceContext, topic: string): Promise<SourceOutcome> => {
    const subscribeUrl = reqString(msg, 'SubscribeURL', '$');
    if (confirmer === undefined) {
      // The URL carries the confirmation token: a credential, so only its host is logged.
      ctx.log.warn(
        { topicArn: topic, subscribeHost: urlHost(subscribeUrl) },
        'SNS subscription confirmation received; autoConfirm is off: allow-list this host in ecrSns.autoConfirm.allowedHosts, or confirm the subscription in SNS',
      );
      return emptyOutcome(
        1,
        'subscription confirmation not visited; confirm it by hand (autoConfirm is off)',
      );
    }
    const url = confirmer.check(subscribeUrl, 'SubscribeURL');
    try {
      await confirmer.getText(url, 64 * 1024, ctx.signal);
    } catch (err) {
      ctx.log.error({ err, topicArn: topic }, 'visiting the SNS SubscribeURL failed');
      throw new WebhookError(
        WebhookErrorCodes.UNAVAILABLE,
        'could not confirm the subscription; retry later',
        {
          headers: { 'Retry-After': '30' },
        },
      );
    }
    ctx.log.info({ topicArn: topic }, 'SNS subscription confirmed');
    return emptyOutcome(1, 'subscription confirmed');
  };

  return {
    name: 'ecr-sns',
    // SNS always posts text/plain; application/json only from hand-made test senders.
    contentTypes: ['text/plain', 'application/json'],
    authenticatedBy: 'body',
    checkHeaders: (ctx) => {
      topicFromHeaders(ctx, topics);
    },
    handle: async (ctx) => {
      const msg = parseJsonObject(ctx.body);
      const type = reqString(msg, 'Type', '$');
      if (!(type in SIGNED_FIELDS))
        throw malformed(`Type ${JSON.stringify(type.slice(0, 40))} is not an SNS message type`);
      const headerType = headerValue(ctx.headers, 'x-amz-sns-message-type');
      if (headerType !== undefined && headerType !== type)
        throw malformed('x-amz-sns-message-type does not match the body Type');
      const topic = reqString(msg, 'TopicArn', '$');
      // Checked before the signature so unknown topics cannot make us fetch certificates.
      if (!topics.has(topic)) throw forbidden(`SNS topic ${topic.slice(0, 256)} is not accepted here`);
      if (topic !== topicFromHeaders(ctx, topics))
        throw malformed('x-amz-sns-topic-arn does not match the body TopicArn');
      await verifySignature(msg, ctx);
      freshTimestamp(msg.Timestamp, ctx, 'Timestamp must be an RFC 3339 date-time', 'SNS message');

      if (type === 'SubscriptionConfirmation') return confirm(msg, ctx, topic);
      if (type === 'UnsubscribeConfirmation') {
        ctx.log.info({ topicArn: topic }, 'SNS unsubscribe confirmation received');
        return emptyOutcome(1);
      }
      let inner: unknown;
      try {
        inner = JSON.parse(reqString(msg, 'Message', '$'));
      } catch {
        // Authentic, but not an EventBridge event: some other publisher on the topic.
        return emptyOutcome(1);
      }
      if (!isObject(inner)) return emptyOutcome(1);
      return parseEcrEvent(inner, ctx, 'ecr-sns', opts.accounts);
    },
    close: async () => {
      await Promise.all([certFetcher?.close(), confirmer?.close()]);
    },
  };
}

/** The accepted topic named by `x-amz-sns-topic-arn`: 401 when absent, 403 when not accepted. */
function topicFromHeaders(ctx: HeaderContext, topics: ReadonlySet<string>): string {
  const topic = headerValue(ctx.headers, 'x-amz-sns-topic-arn');
  if (topic === undefined || topic.length === 0)
    throw unauthenticated('missing x-amz-sns-topic-arn header (SNS sends it with every message)');
  if (!topics.has(topic)) throw forbidden(`SNS topic ${topic.slice(0, 256)} is not accepted here`);
  return topic;
}

/** The host of a URL for a log line, never its path or query (which may carry tokens). */
function urlHost(raw: string): string | undefined {
  try {
    return new URL(raw).host.slice(0, 256);
  } catch {
    return undefined;
  }
}

function certValidAt(cert: X509Certificate, nowMs: number): boolean {
  return Date.parse(cert.validFrom) <= nowMs && nowMs <= Date.parse(cert.validTo);
}
