import type { Logger } from 'pino';
import type { RegistryClient } from '../../../oci/src/client.js';
import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../../oci/src/errors.js';
import { MAX_MANIFEST_BYTES, parseManifest } from '../../../oci/src/manifest.js';
import { formatPlatform, type Platform } from '../../../oci/src/platform.js';
import type { BlobStore, ImageRecord } from '../store/blob-store.js';
import type { TagPolicy } from './mirror-options.js';
import { MirrorHttpError, toMirrorHttpError } from './oci-errors.js';

/** A manifest ready to serve: verified bytes, digest and media type. */
export interface ServedManifest {
  digest: Digest;
  mediaType: string;
  bytes: Buffer;
  /** `store`: found locally; `upstream`: fetched now (and stored); `store-fallback`: tag answered from the store because the upstream could not. */
  origin: 'store' | 'upstream' | 'store-fallback';
}

/** Where a request may go: the upstream registry host, or nowhere (store only). */
export interface ManifestRequest {
  /** Registry host the name lives in (`?ns=` or the default): keys the store's image records. */
  registry: string | undefined;
  /** Registry to contact on a miss; undefined = answer from the store only. */
  upstream: string | undefined;
  name: string;
  /** Bounds every upstream call of this request. */
  signal: AbortSignal;
}

export interface ManifestSourceOptions {
  tagPolicy: TagPolicy;
  resolveTimeoutMs: number;
  platforms: Platform[];
  logger: Logger;
}

/**
 * Answers manifest requests from the store, the upstream, or (for tags the upstream cannot
 * resolve right now) the digest the store last recorded for the tag. Everything served is
 * verified: stored manifests were hashed when stored, fetched ones are hashed by the
 * registry client against the digest asked for, and stored before they are served.
 */
export class ManifestSource {
  constructor(
    readonly store: BlobStore,
    readonly client: RegistryClient,
    readonly opts: ManifestSourceOptions,
  ) {}

  /** By digest: the store if present, else the upstream (if allowed). Throws MirrorHttpError. */
  async byDigest(req: ManifestRequest, digest: Digest): Promise<ServedManifest> {
    const local = await this.#fromStore(digest);
    if (local) return local;
    if (!req.upstream) throw unknownManifest(digest);
    try {
      const got = await this.client.fetchManifest(
        { registry: req.upstream, repository: req.name, digest },
        digest,
        req.signal,
      );
      await this.store.putBytes(got.digest, got.bytes);
      return { digest: got.digest, mediaType: got.mediaType, bytes: got.bytes, origin: 'upstream' };
    } catch (err) {
      throw toMirrorHttpError(err);
    }
  }

  /** By tag, per the tag policy (see `TagPolicy`). Throws MirrorHttpError. */
  async byTag(req: ManifestRequest, tag: string): Promise<ServedManifest> {
    if (this.opts.tagPolicy === 'store-first' || !req.upstream) {
      const known = await this.#recordedDigest(req, tag);
      if (known) {
        const m = await this.#fromStore(known);
        if (m) return m;
      }
      if (!req.upstream) throw unknownManifest(tag);
    }
    const upstream = req.upstream;
    let digest: Digest;
    try {
      const signal = AbortSignal.any([req.signal, AbortSignal.timeout(this.opts.resolveTimeoutMs)]);
      ({ digest } = await this.client.resolve({ registry: upstream, repository: req.name, tag }, signal));
    } catch (err) {
      // The upstream says the tag does not exist: it was deleted or never pushed; an old
      // digest from the store would be a lie.
      if (isPrewarmError(err, ErrorCodes.MANIFEST_UNKNOWN)) throw toMirrorHttpError(err);
      const known = await this.#recordedDigest(req, tag);
      const m = known ? await this.#fromStore(known) : undefined;
      if (!m) throw toMirrorHttpError(err);
      this.opts.logger.info(
        { image: `${req.registry}/${req.name}:${tag}`, digest: m.digest, reason: describe(err) },
        'upstream cannot resolve the tag; serving the digest recorded in the store',
      );
      return { ...m, origin: 'store-fallback' };
    }
    return this.byDigest(req, digest);
  }

  async #fromStore(digest: Digest): Promise<ServedManifest | undefined> {
    const info = await this.store.stat(digest);
    if (!info || info.size > MAX_MANIFEST_BYTES) return undefined;
    const bytes = await this.store.readBytes(digest, MAX_MANIFEST_BYTES).catch(() => undefined);
    if (!bytes) return undefined;
    let mediaType: string;
    try {
      // Layers and configs live in the same store: only a parseable manifest is one.
      mediaType = parseManifest(bytes).mediaType;
    } catch {
      return undefined;
    }
    // A read counts as use for LRU garbage collection (FsBlobStore has touch; others may not).
    const touchable = this.store as BlobStore & { touch?: (d: Digest) => Promise<void> };
    void touchable.touch?.(digest).catch(() => undefined);
    return { digest, mediaType, bytes, origin: 'store' };
  }

  /** The digest the store recorded for `registry/name:tag`, newest record first. */
  async #recordedDigest(req: ManifestRequest, tag: string): Promise<Digest | undefined> {
    if (!req.registry) return undefined;
    const repository = `${req.registry}/${req.name}`;
    for (const p of this.opts.platforms) {
      const r = await this.store.getImage(repository, tag, formatPlatform(p));
      if (r?.tag === tag) return r.digest;
    }
    // Records of other platforms (an arm64 image warmed on purpose) are found by a scan.
    let best: ImageRecord | undefined;
    for (const r of await this.store.listImages()) {
      if (r.repository === repository && r.tag === tag && (!best || r.warmedAt > best.warmedAt)) best = r;
    }
    return best?.digest;
  }
}

function unknownManifest(ref: string): MirrorHttpError {
  return new MirrorHttpError(404, 'MANIFEST_UNKNOWN', 'manifest unknown to the node mirror', {
    reference: ref,
  });
}

function describe(err: unknown): string {
  return isPrewarmError(err) ? err.code : String((err as Error)?.message ?? err);
}
