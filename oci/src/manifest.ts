import { type Digest, isDigest } from './digest.js';
import { ErrorCodes, PrewarmError } from './errors.js';
import { IMAGE_MANIFEST_MEDIA_TYPES, INDEX_MEDIA_TYPES } from './media-types.js';
import { formatPlatform, type Platform, platformMatches } from './platform.js';

/** An OCI content descriptor (validated: digest format, non-negative size). */
export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
}

export interface ImageManifest {
  kind: 'manifest';
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  kind: 'index';
  mediaType: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

export type Manifest = ImageManifest | ImageIndex;

/** Manifests larger than this are refused (distribution itself caps at 4 MiB). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

function bad(why: string): PrewarmError {
  return new PrewarmError(ErrorCodes.MANIFEST_INVALID, `invalid manifest: ${why}`);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseDescriptor(v: unknown, where: string): Descriptor {
  if (!isRecord(v)) throw bad(`${where} is not an object`);
  const { mediaType, digest, size, annotations, platform, urls } = v;
  if (typeof mediaType !== 'string' || mediaType.length === 0) throw bad(`${where}.mediaType missing`);
  if (!isDigest(digest)) throw bad(`${where}.digest is not sha256:<hex>`);
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw bad(`${where}.size invalid`);
  const d: Descriptor = { mediaType, digest, size };
  if (isRecord(annotations)) d.annotations = annotations as Record<string, string>;
  if (isRecord(platform)) {
    if (typeof platform.os !== 'string' || typeof platform.architecture !== 'string') {
      throw bad(`${where}.platform needs os and architecture`);
    }
    d.platform = {
      os: platform.os,
      architecture: platform.architecture,
      ...(typeof platform.variant === 'string' ? { variant: platform.variant } : {}),
    };
  }
  if (Array.isArray(urls)) d.urls = urls.filter((u): u is string => typeof u === 'string');
  return d;
}

/**
 * Parses manifest bytes. `contentType` is the registry's Content-Type; the document's
 * own `mediaType` wins when present. Throws PW_ERR_MANIFEST_INVALID for malformed
 * documents and PW_ERR_UNSUPPORTED_MEDIA_TYPE for schema 1 and unknown types.
 */
export function parseManifest(bytes: Uint8Array, contentType?: string): Manifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw new PrewarmError(
      ErrorCodes.MANIFEST_TOO_LARGE,
      `manifest is ${bytes.byteLength} bytes, limit ${MAX_MANIFEST_BYTES}`,
    );
  }
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (err) {
    throw new PrewarmError(ErrorCodes.MANIFEST_INVALID, 'invalid manifest: not JSON', { cause: err });
  }
  if (!isRecord(doc)) throw bad('not a JSON object');
  const ct = contentType?.split(';')[0]?.trim();
  const mediaType =
    typeof doc.mediaType === 'string' && doc.mediaType.length > 0
      ? doc.mediaType
      : Array.isArray(doc.manifests)
        ? (ct ?? 'application/vnd.oci.image.index.v1+json')
        : (ct ?? 'application/vnd.oci.image.manifest.v1+json');
  if (doc.schemaVersion !== 2) {
    throw new PrewarmError(
      ErrorCodes.UNSUPPORTED_MEDIA_TYPE,
      `unsupported manifest schemaVersion ${String(doc.schemaVersion)}`,
    );
  }
  const annotations = isRecord(doc.annotations) ? (doc.annotations as Record<string, string>) : undefined;
  if (INDEX_MEDIA_TYPES.has(mediaType)) {
    if (!Array.isArray(doc.manifests)) throw bad('index without manifests[]');
    return {
      kind: 'index',
      mediaType,
      manifests: doc.manifests.map((m, i) => parseDescriptor(m, `manifests[${i}]`)),
      ...(annotations ? { annotations } : {}),
    };
  }
  if (
    IMAGE_MANIFEST_MEDIA_TYPES.has(mediaType) ||
    (mediaType.startsWith('application/vnd.oci.') && 'config' in doc)
  ) {
    if (!Array.isArray(doc.layers)) throw bad('manifest without layers[]');
    return {
      kind: 'manifest',
      mediaType,
      config: parseDescriptor(doc.config, 'config'),
      layers: doc.layers.map((l, i) => parseDescriptor(l, `layers[${i}]`)),
      ...(annotations ? { annotations } : {}),
    };
  }
  throw new PrewarmError(ErrorCodes.UNSUPPORTED_MEDIA_TYPE, `unsupported manifest media type ${mediaType}`);
}

/** Attestation and signature entries in an index (buildx's `unknown/unknown`), never runnable. */
export function isAttestation(d: Descriptor): boolean {
  return (
    d.platform?.os === 'unknown' ||
    d.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest' ||
    !IMAGE_MANIFEST_MEDIA_TYPES.has(d.mediaType)
  );
}

/**
 * Chooses the manifest for `platform` from an index. Exact variant match wins over an
 * entry without variant; attestations are skipped. Throws PW_ERR_PLATFORM_NOT_FOUND
 * listing what the index offers.
 */
export function selectPlatform(index: ImageIndex, platform: Platform): Descriptor {
  const runnable = index.manifests.filter((d) => !isAttestation(d) && d.platform !== undefined);
  const exact = runnable.find((d) => d.platform !== undefined && platformMatches(d.platform, platform, true));
  const loose =
    exact ?? runnable.find((d) => d.platform !== undefined && platformMatches(d.platform, platform, false));
  if (loose) return loose;
  const offered = runnable.map((d) => (d.platform ? formatPlatform(d.platform) : '?')).join(', ') || 'none';
  throw new PrewarmError(
    ErrorCodes.PLATFORM_NOT_FOUND,
    `no manifest for platform ${formatPlatform(platform)} (index offers: ${offered})`,
    { detail: { platform: formatPlatform(platform), offered } },
  );
}

/** Every blob an image manifest references: config first, then layers in order. */
export function manifestBlobs(m: ImageManifest): Descriptor[] {
  return [m.config, ...m.layers];
}
