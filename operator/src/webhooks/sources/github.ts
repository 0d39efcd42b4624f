/**
 * GitHub `package` webhook events for container packages (GHCR): `X-GitHub-Event: package`
 * (or the older `registry_package`), `action: published|updated`, with the package owner,
 * name and `package_version.container_metadata.tag`. Every delivery (ping included) must
 * carry `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body under the secret>`.
 *
 * GitHub's payload carries no trustworthy time (container versions often show
 * `0001-01-01T00:00:00Z`) and the delivery id header is not signed, so there is no
 * replay window here: the dedup id is the hash of the signed body, which a replay
 * cannot change.
 */

import { isDigest } from '../../../../oci/src/digest.js';
import { unauthenticated } from '../errors.js';
import { headerValue } from '../http-body.js';
import { constantTimeEqual, hmacSha256Hex } from '../secrets.js';
import {
  asObject,
  bodyId,
  checkRepository,
  checkTag,
  emptyOutcome,
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
}

const SIGNATURE_RE = /^sha256=([0-9a-f]{64})$/;

export function gitHubSource(opts: GitHubSourceOptions): WebhookSource {
  const registry = opts.registry ?? 'ghcr.io';
  return {
    name: 'github',
    contentTypes: ['application/json'],
    handle: async (ctx) => {
      verifySignature(ctx, opts.secrets);
      const kind = headerValue(ctx.headers, 'x-github-event');
      if (kind !== 'package' && kind !== 'registry_package') return emptyOutcome(1);
      return parsePackage(ctx, registry);
    },
  };
}

function verifySignature(ctx: SourceContext, secrets: readonly string[]): void {
  const header = headerValue(ctx.headers, 'x-hub-signature-256');
  if (header === undefined) throw unauthenticated('missing X-Hub-Signature-256 header');
  const m = SIGNATURE_RE.exec(header.trim().toLowerCase());
  if (!m) throw unauthenticated('X-Hub-Signature-256 is not sha256=<64 hex>');
  let ok = false;
  // Compare against every secret (no early exit) so timing does not reveal which matched.
  for (const secret of secrets) ok = constantTimeEqual(hmacSha256Hex(secret, ctx.body), m[1]!) || ok;
  if (!ok) throw unauthenticated('X-Hub-Signature-256 does not match the body under any configured secret');
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
  const ts = parseTimestamp(version.updated_at ?? pkg.updated_at);
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
      // Year-1 placeholders mean "unknown".
      timestampMs: ts !== undefined && ts > Date.UTC(2000, 0, 1) ? ts : undefined,
    },
    ctx,
  );
}
