/**
 * Azure Container Registry webhooks: one JSON object per event, `action` ∈ push, delete,
 * chart_push, chart_delete, quarantine (and ping from `az acr webhook ping`), with
 * `target.{repository,tag,digest,mediaType}` and `request.host`. ACR adds no headers of its
 * own, so authentication is the custom header configured on the webhook
 * (`az acr webhook create --headers Authorization="Bearer <secret>"`).
 */
import {
  asObject,
  checkDigest,
  checkRegistry,
  checkRepository,
  checkTag,
  emptyOutcome,
  freshTimestamp,
  headerSecretCheck,
  oneEvent,
  optString,
  parseJsonObject,
  reqString,
  type SourceContext,
  type SourceOutcome,
  safeId,
  type WebhookSource,
} from './source.js';

export interface AcrSourceOptions {
  /** Header carrying the shared secret, as set with `--headers`. Default `authorization`. */
  header?: string;
  /** Accepted secrets (several for rotation). The header may be `<secret>` or `Bearer <secret>`. */
  secrets: string[];
  /** Registry host to report instead of the payload's `request.host` (e.g. a custom domain). */
  registry?: string;
  /** Replay window for this source, seconds. Default: the router's `maxEventAgeSeconds`. */
  maxEventAgeSeconds?: number;
  /** Largest body, bytes (checked after the sender is authenticated). Default: the router's `maxBodyBytes`. */
  maxBodyBytes?: number;
}

export function acrSource(opts: AcrSourceOptions): WebhookSource {
  return {
    name: 'acr',
    authenticatedBy: 'headers',
    // ACR sends application/json unless the webhook sets its own Content-Type header.
    contentTypes: ['application/json'],
    checkHeaders: headerSecretCheck(opts),
    handle: async (ctx) => parseAcr(ctx, opts.registry),
  };
}

function parseAcr(ctx: SourceContext, registryOverride: string | undefined): SourceOutcome {
  const p = parseJsonObject(ctx.body);
  const action = reqString(p, 'action', '$');
  // chart_push/chart_delete (Helm repositories), delete, quarantine, ping: nothing to warm.
  if (action !== 'push') return emptyOutcome(1);
  const id = reqString(p, 'id', '$');
  const tsMs = freshTimestamp(p.timestamp, ctx, 'timestamp must be an RFC 3339 date-time', 'event');
  const target = asObject(p.target, 'target');
  const repository = checkRepository(reqString(target, 'repository', 'target'), 'target.repository');
  const tag = optString(target, 'tag', 'target');
  const digest = optString(target, 'digest', 'target');
  const registry =
    registryOverride ??
    checkRegistry(reqString(asObject(p.request, 'request'), 'host', 'request'), 'request.host');
  return oneEvent(
    `acr:${safeId(id)}`,
    {
      registry,
      repository,
      tag: tag === undefined ? undefined : checkTag(tag, 'target.tag'),
      digest: digest === undefined ? undefined : checkDigest(digest, 'target.digest'),
      mediaType: optString(target, 'mediaType', 'target'),
      source: 'acr',
      eventId: id,
      timestampMs: tsMs,
    },
    ctx,
  );
}
