import { type Digest, parseDigest } from '../../../oci/src/digest.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import { assertTag, parseReference } from '../../../oci/src/reference.js';
import type { CriAuth } from './cri-image-service.js';

/**
 * The runtime calls an unpack needs (CriImageService has them; so does the daemon's
 * RuntimeImageService port).
 */
export interface UnpackRuntime<I extends { id: string } = { id: string }> {
  pullImage(
    image: string,
    opts?: { signal?: AbortSignal; timeoutMs?: number; auth?: CriAuth },
  ): Promise<string>;
  imageStatus(image: string, opts?: { signal?: AbortSignal; timeoutMs?: number }): Promise<I | undefined>;
}

/** An image to import into the runtime: what was warmed, by digest. */
export interface UnpackTarget {
  /** `registry/repository` as in image references (`127.0.0.1:5000/demo/app`, `docker.io/library/nginx`). */
  repository: string;
  /** The digest the reference resolved to when it was warmed (index or manifest). */
  digest: Digest;
  /**
   * The tag pods use, if any. After the by-digest pull, the tag is pulled too so the runtime
   * records `repository:tag` (kubelet's IfNotPresent check looks the tag up); when the tag
   * still points at `digest` that second pull transfers nothing.
   */
  tag?: string;
}

export interface UnpackOptions {
  signal?: AbortSignal;
  /** Deadline for each PullImage. Default: the client's pull timeout. */
  timeoutMs?: number;
  auth?: CriAuth;
  /** Pull even when the runtime already has the image. Default false. */
  force?: boolean;
}

export interface UnpackResult<I extends { id: string } = { id: string }> {
  /** `repository@digest`, the reference pulled. */
  reference: string;
  /** The runtime's image id (config digest). */
  imageId: string;
  /** ImageStatus of the by-digest reference after the pull. */
  image: I;
  /** True when the runtime had it already and nothing was pulled. */
  alreadyPresent: boolean;
  /**
   * Only with `tag`: true when `repository:tag` now resolves to this image in the runtime;
   * false when the tag moved upstream to another image (that one was pulled under the tag).
   */
  tagMatches?: boolean;
  durationMs: number;
}

/**
 * Runtime import for `unpack` mode: CRI PullImage by digest, so containerd fetches exactly
 * the warmed content from the node mirror (from disk) and unpacks it; then ImageStatus must
 * show it — only then is the image "unpacked" (a pull that returned but left nothing visible
 * is an error). Throws PrewarmError: PW_ERR_INVALID_REFERENCE (bad repository/tag),
 * PW_ERR_INVALID_DIGEST, PW_ERR_MANIFEST_UNKNOWN (runtime cannot resolve it, or does not
 * show it after the pull), PW_ERR_NETWORK (runtime socket), PW_ERR_ABORTED.
 */
export async function unpackImage<I extends { id: string }>(
  cri: UnpackRuntime<I>,
  target: UnpackTarget,
  opts: UnpackOptions = {},
): Promise<UnpackResult<I>> {
  const started = performance.now();
  const digest = parseDigest(target.digest);
  // parseReference validates host and repository (and normalises Docker Hub short names).
  const ref = parseReference(`${target.repository}@${digest}`);
  if (target.tag !== undefined) assertTag(target.tag);
  const repository = `${ref.registry}/${ref.repository}`;
  const reference = `${repository}@${digest}`;
  const call = {
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
  };
  let image = opts.force ? undefined : await cri.imageStatus(reference, call);
  const alreadyPresent = image !== undefined;
  if (!image) {
    const imageId = await cri.pullImage(reference, { ...call, ...(opts.auth ? { auth: opts.auth } : {}) });
    image = await cri.imageStatus(reference, call);
    if (!image || image.id !== imageId) {
      throw new PrewarmError(
        ErrorCodes.MANIFEST_UNKNOWN,
        `PullImage ${reference} returned ${imageId} but ImageStatus ${image ? `shows ${image.id}` : 'does not show it'}`,
      );
    }
  }
  let tagMatches: boolean | undefined;
  if (target.tag !== undefined) {
    const tagged = `${repository}:${target.tag}`;
    let status = await cri.imageStatus(tagged, call);
    if (status?.id !== image.id) {
      await cri.pullImage(tagged, { ...call, ...(opts.auth ? { auth: opts.auth } : {}) });
      status = await cri.imageStatus(tagged, call);
    }
    tagMatches = status?.id === image.id;
  }
  return {
    reference,
    imageId: image.id,
    image,
    alreadyPresent,
    ...(tagMatches !== undefined ? { tagMatches } : {}),
    durationMs: performance.now() - started,
  };
}
