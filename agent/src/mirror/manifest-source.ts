import type { Logger } from 'pino';
import type { ForwardedAuth, RegistryClient } from '../../../oci/src/client.js';
import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../../oci/src/errors.js';
import { MAX_MANIFEST_BYTES, parseManifest } from '../../../oci/src/manifest.js';
import { formatPlatform, type Platform } from '../../../oci/src/platform.js';
import type { BlobStore } from '../store/blob-store.js';
import type { TagPolicy } from './mirror-options.js';
import { MirrorHttpError, toMirrorHttpError } from './oci-errors.js';
import type { RecordIndex } from './record-index.js';

/** A manifest ready to serve: verified bytes, digest and media type. */
export interface ServedManifest {
  digest: Digest;
  mediaType: string;
  bytes: Buffer;
  /**
   * `store`: found locally and tied to the repository by a record, or confirmed upstream;
   * `upstream`: fetched now (and stored); `store-fallback`: tag answered from a record
   * because the upstream could not be reached.
   */
  origin: 'store' | 'upstream' | 'store-fallback';
}

/** Where a request may go: the upstream registry host, or nowhere (store only). */
export interface ManifestRequest {
  /** Registry host the name lives in (`?ns=` or the default): keys the store's image records. */
  registry: string | undefined;
  /** Registry to contact (allowed by the egress policy); undefined = answer from records only. */
  upstream: string | undefined;
  name: string;
  /** The client's own authorization, forwarded upstream; the node's credentials are never used. */
  forward: ForwardedAuth;
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
 * Upstream failures after which a tag may be answered from the store's record: the
 * upstream could not be reached or failed (network error, timeout, 5xx). Never a refusal
 * (401/403: the client is not entitled; the store must not answer for the upstream) and
 * never "no such tag" (404: a deleted tag is not resurrected).
 */
export function upstreamUnreachable(err: unknown): boolean {
  if (!isPrewarmError(err)) return false;
  if (err.code === ErrorCodes.NETWORK || err.code === ErrorCodes.ABORTED) return true;
  return err.code === ErrorCodes.REGISTRY_ERROR && (err.status === undefined || err.status >= 500);
}

/**
 * Answers manifest requests. What is served is verified (stored manifests were hashed when
 * stored, fetched ones are hashed against the digest asked for) and entitled: a manifest is
 * served from the store without the upstream only when an image record ties it to the
 * requested repository; otherwise the upstream must confirm it for this repository with
 * the client's own authorization (a 401/403 is passed on). By tag, the upstream decides;
 * the record answers only while the upstream is unreachable (`upstreamUnreachable`), or
 * first with the `store-first` policy.
 */
export class ManifestSource {
  constructor(
    readonly store: BlobStore,
    readonly client: RegistryClient,
    readonly records: RecordIndex,
    readonly opts: ManifestSourceOptions,
  ) {}

  /**
   * By digest. `confirmed`: the upstream has just named this digest for the repository
   * (a tag resolved with the client's authorization). Throws MirrorHttpError.
   */
  async byDigest(req: ManifestRequest, digest: Digest, confirmed = false): Promise<ServedManifest> {
    const local = await this.#fromStore(digest);
    const tied =
      req.registry !== undefined && (await this.records.ties(`${req.registry}/${req.name}`, digest));
    if (local && (tied || confirmed)) return local;
    if (!req.upstream) throw unknownManifest(digest);
    const ref = { registry: req.upstream, repository: req.name, digest };
    try {
      if (local) {
        // In the store but not tied to this repository: the upstream must confirm that this
        // client may read it here (a digest is not a secret).
        const head = await this.client.headManifest(ref, digest, req.signal, req.forward);
        if (!head) await this.client.fetchManifest(ref, digest, req.signal, req.forward);
        return local;
      }
      const got = await this.client.fetchManifest(ref, digest, req.signal, req.forward);
      await this.store.putBytes(got.digest, got.bytes);
      return { digest: got.digest, mediaType: got.mediaType, bytes: got.bytes, origin: 'upstream' };
    } catch (err) {
      throw toMirrorHttpError(err);
    }
  }

  /** By tag, per the tag policy (see `TagPolicy`). Throws MirrorHttpError. */
  async byTag(req: ManifestRequest, tag: string): Promise<ServedManifest> {
    if (this.opts.tagPolicy === 'store-first' || !req.upstream) {
      const m = await this.#recorded(req, tag);
      if (m) return m;
      if (!req.upstream) throw unknownManifest(tag);
    }
    const upstream = req.upstream;
    let digest: Digest;
    try {
      const signal = AbortSignal.any([req.signal, AbortSignal.timeout(this.opts.resolveTimeoutMs)]);
      ({ digest } = await this.client.resolve(
        { registry: upstream, repository: req.name, tag },
        signal,
        req.forward,
      ));
    } catch (err) {
      if (!upstreamUnreachable(err)) throw toMirrorHttpError(err);
      const m = await this.#recorded(req, tag);
      if (!m) throw toMirrorHttpError(err);
      this.opts.logger.info(
        { image: `${req.registry}/${req.name}:${tag}`, digest: m.digest, reason: describe(err) },
        'upstream cannot be reached to resolve the tag; serving the digest recorded in the store',
      );
      return { ...m, origin: 'store-fallback' };
    }
    return this.byDigest(req, digest, true);
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

  /** The manifest a record of `registry/name:tag` names, if the store holds it. */
  async #recorded(req: ManifestRequest, tag: string): Promise<ServedManifest | undefined> {
    if (!req.registry) return undefined;
    const digest = await this.records.tagDigest(
      `${req.registry}/${req.name}`,
      tag,
      this.opts.platforms.map(formatPlatform),
    );
    return digest ? this.#fromStore(digest) : undefined;
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
