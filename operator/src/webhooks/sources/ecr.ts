/**
 * Amazon ECR push events, as EventBridge emits them (`source: aws.ecr`,
 * `detail-type: ECR Image Action`, `detail.{action-type, result, repository-name,
 * image-digest, image-tag}`). Two transports deliver them here:
 *
 * - an EventBridge API destination (this module, `<basePath>/ecr`), authenticated by the
 *   connection's API-key header;
 * - an SNS topic with an HTTPS subscription (sns.ts, `<basePath>/ecr-sns`), authenticated by
 *   SNS's message signature.
 *
 * Both dedup under `ecr:<event id>`, so an event delivered over both paths dispatches once.
 * The registry host is derived from `account` and `region`; nothing in the payload is fetched.
 */
import { forbidden, malformed } from '../errors.js';
import type { WebhookSourceName } from '../push-event.js';
import {
  asObject,
  checkDigest,
  checkRepository,
  checkTag,
  emptyOutcome,
  freshTimestamp,
  headerSecretCheck,
  type JsonObject,
  oneEvent,
  optString,
  parseJsonObject,
  reqString,
  type SourceContext,
  type SourceOutcome,
  safeId,
  type WebhookSource,
} from './source.js';

export interface EcrEventBridgeSourceOptions {
  /** Header the EventBridge connection sends its API key in (`ApiKeyName`). Default `x-api-key`. */
  header?: string;
  /** Accepted API key values (`ApiKeyValue`; several for rotation). */
  secrets: string[];
  /** AWS account ids whose events are accepted; others get 403. Default: any. */
  accounts?: string[];
  /** Replay window, seconds. Default 86 400 (EventBridge retries a delivery for up to 24 h). */
  maxEventAgeSeconds?: number;
  /** Largest body, bytes (checked after the sender is authenticated). Default: the router's `maxBodyBytes`. */
  maxBodyBytes?: number;
}

export function ecrEventBridgeSource(opts: EcrEventBridgeSourceOptions): WebhookSource {
  return {
    name: 'ecr',
    authenticatedBy: 'headers',
    contentTypes: ['application/json'],
    checkHeaders: headerSecretCheck(opts, 'x-api-key'),
    handle: async (ctx) => parseEcrEvent(parseJsonObject(ctx.body), ctx, 'ecr', opts.accounts),
  };
}

const ACCOUNT_RE = /^\d{12}$/;
const REGION_RE = /^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$/;

/** The private registry host of an account and region (China regions use amazonaws.com.cn). */
export function ecrRegistryHost(account: string, region: string): string {
  return `${account}.dkr.ecr.${region}.amazonaws.com${region.startsWith('cn-') ? '.cn' : ''}`;
}

/**
 * Turns one EventBridge event into an outcome. Events that are not ECR image pushes
 * (other detail types, DELETE, FAILURE, pull-through cache actions) are ignored, not
 * refused: a rule that matches too much should not make the sender retry.
 */
export function parseEcrEvent(
  e: JsonObject,
  ctx: SourceContext,
  source: WebhookSourceName,
  accounts: readonly string[] | undefined,
): SourceOutcome {
  if (e.source !== 'aws.ecr' || e['detail-type'] !== 'ECR Image Action') return emptyOutcome(1);
  const id = reqString(e, 'id', '$');
  const account = reqString(e, 'account', '$');
  const region = reqString(e, 'region', '$');
  if (!ACCOUNT_RE.test(account)) throw malformed('account must be a 12-digit AWS account id');
  if (!REGION_RE.test(region)) throw malformed('region is not an AWS region name');
  if (accounts !== undefined && !accounts.includes(account)) {
    throw forbidden(`events from AWS account ${account} are not accepted here`);
  }
  const tsMs = freshTimestamp(e.time, ctx, 'time must be an RFC 3339 date-time', 'event');
  const d = asObject(e.detail, 'detail');
  if (d['action-type'] !== 'PUSH' || d.result !== 'SUCCESS') return emptyOutcome(1);
  const repository = checkRepository(reqString(d, 'repository-name', 'detail'), 'detail.repository-name');
  const tag = optString(d, 'image-tag', 'detail');
  const digest = optString(d, 'image-digest', 'detail');
  return oneEvent(
    `ecr:${safeId(id)}`,
    {
      registry: ecrRegistryHost(account, region),
      repository,
      tag: tag === undefined ? undefined : checkTag(tag, 'detail.image-tag'),
      digest: digest === undefined ? undefined : checkDigest(digest, 'detail.image-digest'),
      mediaType: optString(d, 'manifest-media-type', 'detail'),
      source,
      eventId: id,
      timestampMs: tsMs,
    },
    ctx,
  );
}
