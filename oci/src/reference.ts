import { type Digest, parseDigest } from './digest.js';
import { ErrorCodes, PrewarmError } from './errors.js';

/**
 * A parsed image reference: `registry/repository[:tag][@digest]`.
 * Follows the distribution reference grammar; Docker Hub short names are normalised
 * (`nginx` → `docker.io/library/nginx`) and `docker.io` is fetched from
 * `registry-1.docker.io`.
 */
export interface ImageReference {
  /** Registry host as written, with port (`docker.io`, `127.0.0.1:5000`). */
  readonly registry: string;
  /** Repository path inside the registry (`library/nginx`). */
  readonly repository: string;
  readonly tag?: string;
  readonly digest?: Digest;
}

const COMPONENT = '[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*';
const REPOSITORY_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const HOST_RE =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/;
const MAX_NAME = 255;

function invalid(ref: string, why: string): PrewarmError {
  return new PrewarmError(
    ErrorCodes.INVALID_REFERENCE,
    `invalid image reference ${JSON.stringify(ref.slice(0, 300))}: ${why}`,
    {
      status: 400,
    },
  );
}

export function isValidRepository(name: string): boolean {
  return name.length > 0 && name.length <= MAX_NAME && REPOSITORY_RE.test(name);
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

export function isValidRegistryHost(host: string): boolean {
  return host.length <= 255 && HOST_RE.test(host);
}

/** Throws PW_ERR_INVALID_REFERENCE unless `name` is a valid repository path (no `..`, no upper case). */
export function assertRepository(name: string): string {
  if (!isValidRepository(name)) throw invalid(name, 'bad repository name');
  return name;
}

export function assertTag(tag: string): string {
  if (!isValidTag(tag)) throw invalid(tag, 'bad tag');
  return tag;
}

/** Parses `ref`; throws PW_ERR_INVALID_REFERENCE with the reason when it is malformed. */
export function parseReference(ref: string): ImageReference {
  if (ref.length === 0 || ref.length > 1024) throw invalid(ref, 'empty or too long');
  let rest = ref;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    try {
      digest = parseDigest(rest.slice(at + 1));
    } catch {
      throw invalid(ref, 'bad digest (only sha256:<64 lower-case hex> is accepted)');
    }
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isValidTag(tag)) throw invalid(ref, 'bad tag');
  }
  let registry = 'docker.io';
  let repository = rest;
  const slash = rest.indexOf('/');
  if (slash > 0) {
    const first = rest.slice(0, slash);
    if (
      first.includes('.') ||
      first.includes(':') ||
      first === 'localhost' ||
      first !== first.toLowerCase()
    ) {
      registry = first;
      repository = rest.slice(slash + 1);
    }
  }
  if (!isValidRegistryHost(registry)) throw invalid(ref, 'bad registry host');
  if (registry === 'docker.io' && !repository.includes('/')) repository = `library/${repository}`;
  if (!isValidRepository(repository)) throw invalid(ref, 'bad repository name');
  if (tag === undefined && digest === undefined) tag = 'latest';
  return {
    registry,
    repository,
    ...(tag !== undefined ? { tag } : {}),
    ...(digest !== undefined ? { digest } : {}),
  };
}

/** The canonical string form (`registry/repo:tag@digest`). */
export function formatReference(ref: ImageReference): string {
  let s = `${ref.registry}/${ref.repository}`;
  if (ref.tag !== undefined) s += `:${ref.tag}`;
  if (ref.digest !== undefined) s += `@${ref.digest}`;
  return s;
}

/** Digest if pinned, else tag: what to put in `/v2/<name>/manifests/<here>`. */
export function manifestReference(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? 'latest';
}

/** The host actually contacted for a registry name (Docker Hub's API lives elsewhere). */
export function registryEndpointHost(registry: string): string {
  return registry === 'docker.io' || registry === 'index.docker.io' ? 'registry-1.docker.io' : registry;
}
