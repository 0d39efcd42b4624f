/**
 * Google Artifact Registry and Container Registry, via Pub/Sub push: both publish to the
 * `gcr` topic; a push subscription POSTs `{ message: { data, messageId, publishTime,
 * attributes }, subscription }` where `data` is base64 of
 * `{ "action": "INSERT"|"DELETE", "digest": "<host>/<path>@sha256:…", "tag": "<host>/<path>:<tag>" }`.
 *
 * Authentication, either or both (all configured ones must pass), both before the body is
 * read:
 * - a shared token in the push endpoint URL (`…/gcr?token=<token>`), and/or
 * - the OIDC JWT Pub/Sub attaches with `--push-auth-service-account`, verified with `jose`
 *   against a configured JWKS (or a configured JWKS URL), issuer accounts.google.com,
 *   the configured audience, and a verified e-mail on `serviceAccountEmails`. The list is
 *   required: Google signs tokens for every service account of every project, so
 *   signature, issuer and audience alone admit anyone who can name our audience.
 * Unwrapped ("no wrapper") push payloads are not supported: they lose messageId/publishTime.
 */
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  type JSONWebKeySet,
  type JWTVerifyGetKey,
  jwtVerify,
} from 'jose';
import { parseReference } from '../../../../oci/src/reference.js';
import { checkKnownKeys, checkSecretList, invalidConfig } from '../config.js';
import { forbidden, malformed, unauthenticated } from '../errors.js';
import { headerValue } from '../http-body.js';
import {
  asObject,
  checkQueryToken,
  emptyOutcome,
  freshTimestamp,
  type HeaderContext,
  oneEvent,
  optString,
  parseJsonObject,
  type SourceContext,
  type SourceOutcome,
  safeId,
  type WebhookSource,
} from './source.js';

export interface GcrOidcOptions {
  /** The JWKS to verify with (content of https://www.googleapis.com/oauth2/v3/certs). */
  jwks?: JSONWebKeySet;
  /** Or: fetch and cache keys from this configured URL (never from the payload). */
  jwksUrl?: string;
  /** Expected `aud`: the subscription's `--push-auth-token-audience` (default there: the push endpoint URL). */
  audience: string | string[];
  /**
   * Accepted `email` claims (the `--push-auth-service-account`), required: a token of any
   * other service account is refused with 401.
   */
  serviceAccountEmails: string[];
  /** Accepted issuers. Default `https://accounts.google.com` and `accounts.google.com`. */
  issuers?: string[];
}

export interface GcrPubSubSourceOptions {
  /** Tokens accepted in the `token` query parameter of the push endpoint. */
  tokens?: string[];
  /** Verify the push request's OIDC token. */
  oidc?: GcrOidcOptions;
  /** Accepted subscriptions (`projects/<project>/subscriptions/<name>`). Default: any. */
  subscriptions?: string[];
  /** Replay window, seconds (by publishTime). Default 86 400: Pub/Sub keeps retrying for days. */
  maxEventAgeSeconds?: number;
  /** Largest body, bytes (checked after the sender is authenticated). Default: the router's `maxBodyBytes`. */
  maxBodyBytes?: number;
}

const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

export function gcrPubSubSource(opts: GcrPubSubSourceOptions): WebhookSource {
  const tokens = opts.tokens === undefined ? undefined : checkSecretList(opts.tokens, 'gcr token');
  const oidc = opts.oidc;
  if (tokens === undefined && oidc === undefined) throw invalidConfig('gcr needs tokens and/or oidc');
  let keys: JWTVerifyGetKey | undefined;
  if (oidc !== undefined) {
    checkKnownKeys(
      oidc,
      ['jwks', 'jwksUrl', 'audience', 'serviceAccountEmails', 'issuers'],
      'sources.gcr.oidc',
    );
    if (oidc.jwks !== undefined) keys = createLocalJWKSet(oidc.jwks);
    else if (oidc.jwksUrl !== undefined) keys = createRemoteJWKSet(new URL(oidc.jwksUrl));
    else throw invalidConfig('gcr.oidc needs jwks or jwksUrl');
    const aud = Array.isArray(oidc.audience) ? oidc.audience : [oidc.audience];
    if (aud.length === 0 || aud.some((a) => typeof a !== 'string' || a.length === 0))
      throw invalidConfig('gcr.oidc.audience is required');
    const emails = oidc.serviceAccountEmails as unknown;
    if (
      !Array.isArray(emails) ||
      emails.length === 0 ||
      emails.some((e) => typeof e !== 'string' || !e.includes('@'))
    ) {
      throw invalidConfig(
        'gcr.oidc.serviceAccountEmails must list the push service account(s): without it a token of any Google service account would be accepted',
      );
    }
  }
  const subscriptions = opts.subscriptions === undefined ? undefined : new Set(opts.subscriptions);

  const verifyJwt = async (ctx: HeaderContext): Promise<void> => {
    if (oidc === undefined || keys === undefined) return;
    const auth = headerValue(ctx.headers, 'authorization');
    const m = auth === undefined ? null : /^Bearer\s+([A-Za-z0-9._~+/=-]+)$/i.exec(auth.trim());
    if (!m) throw unauthenticated('missing Pub/Sub OIDC bearer token');
    let payload: Record<string, unknown>;
    try {
      ({ payload } = await jwtVerify(m[1]!, keys, {
        issuer: oidc.issuers ?? ['https://accounts.google.com', 'accounts.google.com'],
        audience: oidc.audience,
        algorithms: ['RS256'],
        currentDate: new Date(ctx.nowMs),
        clockTolerance: Math.round(ctx.maxClockSkewMs / 1000),
      }));
    } catch (err) {
      ctx.log.debug({ reason: (err as Error).message }, 'Pub/Sub token rejected');
      throw unauthenticated('Pub/Sub OIDC token does not verify (signature, issuer, audience or expiry)');
    }
    // A valid Google token of someone else's service account is no credential here.
    if (
      payload.email_verified !== true ||
      typeof payload.email !== 'string' ||
      !oidc.serviceAccountEmails.includes(payload.email)
    ) {
      throw unauthenticated('Pub/Sub OIDC token is not from an accepted service account');
    }
  };

  return {
    name: 'gcr',
    contentTypes: ['application/json'],
    authenticatedBy: 'headers',
    checkHeaders: async (ctx) => {
      if (tokens !== undefined) checkQueryToken(ctx, tokens);
      await verifyJwt(ctx);
    },
    handle: async (ctx) => parsePush(ctx, subscriptions),
  };
}

function parsePush(ctx: SourceContext, subscriptions: ReadonlySet<string> | undefined): SourceOutcome {
  const push = parseJsonObject(ctx.body);
  const message = asObject(push.message, 'message');
  const sub = optString(push, 'subscription', '$');
  if (subscriptions !== undefined && (sub === undefined || !subscriptions.has(sub))) {
    throw forbidden(`subscription ${JSON.stringify(sub ?? '')} is not accepted here`);
  }
  const id = optString(message, 'messageId', 'message') ?? optString(message, 'message_id', 'message');
  if (id === undefined) throw malformed('message.messageId must be a non-empty string');
  const tsMs = freshTimestamp(
    message.publishTime ?? message.publish_time,
    ctx,
    'message.publishTime must be an RFC 3339 date-time',
    'message',
  );
  const data = optString(message, 'data', 'message');
  if (data === undefined || !BASE64_RE.test(data)) throw malformed('message.data must be base64');
  const n = parseJsonObject(Buffer.from(data, 'base64'), 'message.data');
  if (n.action !== 'INSERT') return emptyOutcome(1);
  const tagRef = optString(n, 'tag', 'message.data');
  const digestRef = optString(n, 'digest', 'message.data');
  const tagged = tagRef === undefined ? undefined : parseRef(tagRef, 'message.data.tag');
  const pinned = digestRef === undefined ? undefined : parseRef(digestRef, 'message.data.digest');
  if (tagged !== undefined && tagged.tag === undefined) throw malformed('message.data.tag has no tag');
  if (pinned !== undefined && pinned.digest === undefined)
    throw malformed('message.data.digest has no digest');
  const base = tagged ?? pinned;
  if (base === undefined) throw malformed('message.data has neither tag nor digest');
  // The digest only belongs to this event when it names the same repository.
  const sameRepo =
    pinned !== undefined && pinned.registry === base.registry && pinned.repository === base.repository;
  return oneEvent(
    `gcr:${safeId(id)}`,
    {
      registry: base.registry.toLowerCase(),
      repository: base.repository,
      tag: tagged?.tag,
      digest: sameRepo ? pinned.digest : undefined,
      source: 'gcr',
      eventId: id,
      timestampMs: tsMs,
    },
    ctx,
  );
}

function parseRef(ref: string, path: string): ReturnType<typeof parseReference> {
  // A bare name would be read as a Docker Hub image; Artifact Registry always names its host.
  if (!ref.includes('/')) throw malformed(`${path} must be a full image reference`);
  try {
    return parseReference(ref);
  } catch (err) {
    throw malformed(`${path} is not a valid image reference`, err);
  }
}
