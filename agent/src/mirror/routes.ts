import { type Digest, isDigest } from '../../../oci/src/digest.js';
import { isValidRegistryHost, isValidRepository, isValidTag } from '../../../oci/src/reference.js';
import { MirrorHttpError } from './oci-errors.js';

/** A request the mirror understood. Names and references are validated: safe as keys. */
export type MirrorRoute =
  | { kind: 'base' }
  | { kind: 'manifest'; name: string; tag: string; digest?: undefined }
  | { kind: 'manifest'; name: string; digest: Digest; tag?: undefined }
  | { kind: 'blob'; name: string; digest: Digest };

const ROUTE_RE = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/;

/**
 * Parses the path of a request (`/v2/<name>/manifests/<ref>`, `/v2/<name>/blobs/<digest>`,
 * `/v2/`). Throws MirrorHttpError for anything else: 404 NAME_INVALID for a bad repository
 * name (what distribution answers, as its router matches no route), 404 TAG_INVALID for a bad
 * tag, 400 DIGEST_INVALID for a malformed digest (as distribution), 404 UNSUPPORTED for other
 * paths. Percent-escapes are refused outright: no valid name contains one, and decoding
 * them is how `..` sneaks past a check.
 */
export function parseMirrorPath(path: string): MirrorRoute {
  if (path === '/v2/' || path === '/v2') return { kind: 'base' };
  if (path.includes('%') || path.includes('\\'))
    throw new MirrorHttpError(404, 'NAME_INVALID', 'escaped characters are not allowed in names');
  const m = ROUTE_RE.exec(path);
  if (!m) throw new MirrorHttpError(404, 'UNSUPPORTED', 'not served by the node mirror');
  const [, name = '', kind, ref = ''] = m;
  if (!isValidRepository(name))
    throw new MirrorHttpError(404, 'NAME_INVALID', 'invalid repository name', { name: name.slice(0, 256) });
  if (isDigest(ref))
    return kind === 'blobs' ? { kind: 'blob', name, digest: ref } : { kind: 'manifest', name, digest: ref };
  if (ref.includes(':'))
    throw new MirrorHttpError(400, 'DIGEST_INVALID', 'invalid digest (only sha256:<64 lower-case hex>)');
  if (kind === 'blobs') throw new MirrorHttpError(404, 'UNSUPPORTED', 'blobs are addressed by digest');
  if (!isValidTag(ref)) throw new MirrorHttpError(404, 'TAG_INVALID', 'invalid tag');
  return { kind: 'manifest', name, tag: ref };
}

/** The upstream named by `?ns=` (validated), undefined when absent. Throws 400 NAME_INVALID when malformed. */
export function parseNamespace(query: URLSearchParams): string | undefined {
  const ns = query.get('ns');
  if (ns === null || ns === '') return undefined;
  if (!isValidRegistryHost(ns)) throw new MirrorHttpError(400, 'NAME_INVALID', 'invalid ns (registry host)');
  return ns;
}

const PEER_BLOB_RE = /^\/peer\/v1\/blobs\/([^/]+)$/;

/**
 * Parses a peer listener path: only `/peer/v1/blobs/<digest>` exists (no manifests, no
 * tags, no repository names). Throws MirrorHttpError: 400 DIGEST_INVALID for a malformed
 * digest, 404 UNSUPPORTED for any other path.
 */
export function parsePeerPath(path: string): Digest {
  const m = PEER_BLOB_RE.exec(path);
  if (!m) throw new MirrorHttpError(404, 'UNSUPPORTED', 'peers serve blobs by digest only');
  const ref = m[1] as string;
  if (!isDigest(ref))
    throw new MirrorHttpError(400, 'DIGEST_INVALID', 'invalid digest (only sha256:<64 lower-case hex>)');
  return ref;
}
