/**
 * GitHub `package` webhook events for container packages (GHCR): `X-GitHub-Event: package`
 * (or the older `registry_package`), `action: published|updated`, with the package owner,
 * name and `package_version.container_metadata.tag`. Every delivery (ping included) must
 * carry `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body under the secret>`;
 * a request without a well-formed signature header is refused before its body is read.
 *
 * Replay window: GitHub signs only the body, and neither the delivery id nor any header
 * carries a signed time, so the window is taken from the signed body: the latest of
 * `package_version.updated_at`, `package_version.created_at` and `package.updated_at`
 * (year-1 placeholders, which container versions often show, are skipped). A delivery
 * whose freshest time is outside the window, or that has no usable time at all, is
 * refused with PW_ERR_WEBHOOK_STALE. Inside the window the dedup id is the hash of the
 * signed body, which a replay cannot change, and the router keeps it at least as long as
 * the window (dedupTtlSeconds), so a captured delivery dispatches at most once.
 */

import { isDigest } from '../../../../oci/src/digest.js';
import { unauthenticated, WebhookError, WebhookErrorCodes } from '../errors.js';
import { headerValue } from '../http-body.js';
import { constantTimeEqual, hmacSha256Hex } from '../secrets.js';
import {
  asObject,
  assertFresh,
  bodyId,
  checkRepository,
  checkTag,
  emptyOutcome,
  type HeaderContext,
  isDigestLike,
  isObject,
  type JsonObject,
  oneEvent,
  optString,
  parseJsonObject,
  parseTimestamp,
  reqString,
  type SourceContext,
  type SourceOutcome,
  type WebhookSource,
} from './source.js';

export interface GitHubSourceOptions {
  /** Webhook secrets (several for rotation). */
  secrets: string[];
  /** Container registry host. Default `ghcr.io` (GitHub Enterprise Server: `containers.<host>`). */
  registry?: string;
  /** Replay window, seconds (by the package times in the signed body). Default: the router's. */
  maxEventAgeSeconds?: number;
  /**
   * Largest body, bytes. Default 64 KiB: the body is read before it can be authenticated,
   * and package events are a few KiB.
   */
  maxBodyBytes?: number;
}

const SIGNATURE_RE = /^sha256=([0-9a-f]{64})$/;

export function gitHubSource(opts: GitHubSourceOptions): WebhookSource {
  const registry = opts.registry ?? 'ghcr.io';
  return {
    name: 'github',
    contentTypes: ['application/json'],
    authenticatedBy: 'body',
    // Nothing to verify yet, but a request that cannot carry a valid signature is not read.
    checkHeaders: (ctx) => {
      signatureFromHeaders(ctx);
    },
    handle: async (ctx) => {
      verifySignature(ctx, opts.secrets);
      const kind = headerValue(ctx.headers, 'x-github-event');
      if (kind !== 'package' && kind !== 'registry_package') return emptyOutcome(1);
      return parsePackage(ctx, registry);
    },
  };
}

/** The hex digest of a well-formed `X-Hub-Signature-256` header; 401 when there is none. */
function signatureFromHeaders(ctx: HeaderContext): string {
  const header = headerValue(ctx.headers, 'x-hub-signature-256');
  if (header === undefined) throw unauthenticated('missing X-Hub-Signature-256 header');
  const m = SIGNATURE_RE.exec(header.trim().toLowerCase());
  if (!m) throw unauthenticated('X-Hub-Signature-256 is not sha256=<64 hex>');
  return m[1]!;
}

function verifySignature(ctx: SourceContext, secrets: readonly string[]): void {
  const presented = signatureFromHeaders(ctx);
  let ok = false;
  // Compare against every secret (no early exit) so timing does not reveal which matched.
  for (const secret of secrets) ok = constantTimeEqual(hmacSha256Hex(secret, ctx.body), presented) || ok;
  if (!ok) throw unauthenticated('X-Hub-Signature-256 does not match the body under any configured secret');
}

/** Year-1 placeholders (and anything before 2000) mean "unknown". */
function usableTime(v: unknown): number | undefined {
  const ts = parseTimestamp(v);
  return ts !== undefined && ts > Date.UTC(2000, 0, 1) ? ts : undefined;
}

function parsePackage(ctx: SourceContext, registry: string): SourceOutcome {
  const p = parseJsonObject(ctx.body);
  const action = reqString(p, 'action', '$');
  if (action !== 'published' && action !== 'updated') return emptyOutcome(1);
  const pkg: JsonObject = isObject(p.package) ? p.package : asObject(p.registry_package, 'package');
  const type = (optString(pkg, 'package_type', 'package') ?? '').toLowerCase();
  if (type !== 'container' && type !== 'docker') return emptyOutcome(1);
  const owner = reqString(asObject(pkg.owner, 'package.owner'), 'login', 'package.owner');
  // GHCR names are lower-case; GitHub logins and package names may not be.
  const repository = checkRepository(
    `${owner}/${reqString(pkg, 'name', 'package')}`.toLowerCase(),
    'package.owner.login + package.name',
  );
  const version = asObject(pkg.package_version, 'package.package_version');
  const meta = isObject(version.container_metadata) ? version.container_metadata : {};
  const tagObj = isObject(meta.tag) ? meta.tag : {};
  const tagRaw = optString(tagObj, 'name', 'package.package_version.container_metadata.tag');
  const tag =
    tagRaw === undefined || isDigestLike(tagRaw)
      ? undefined
      : checkTag(tagRaw, 'package.package_version.container_metadata.tag.name');
  // For containers the version name is the manifest digest; anything else is not a digest hint.
  const versionName =
    optString(version, 'version', 'package.package_version') ??
    optString(version, 'name', 'package.package_version');
  const manifest = isObject(meta.manifest) ? meta.manifest : {};
  const id = bodyId(ctx.body);
  const times = [version.updated_at, version.created_at, pkg.updated_at]
    .map(usableTime)
    .filter((t): t is number => t !== undefined);
  if (times.length === 0) {
    throw new WebhookError(
      WebhookErrorCodes.STALE,
      'the package event carries no usable time (package_version.updated_at/created_at, package.updated_at), so it cannot be placed in the replay window',
    );
  }
  const ts = Math.max(...times);
  assertFresh(ts, ctx, 'package event');
  return oneEvent(
    `github:${id}`,
    {
      registry,
      repository,
      tag,
      digest: versionName !== undefined && isDigest(versionName) ? versionName : undefined,
      mediaType: optString(manifest, 'media_type', 'package.package_version.container_metadata.manifest'),
      source: 'github',
      eventId: id,
      timestampMs: ts,
    },
    ctx,
  );
}
