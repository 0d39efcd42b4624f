import type { Digest } from '../../../oci/src/digest.js';
import { type Manifest, manifestBlobs, parseManifest } from '../../../oci/src/manifest.js';
import type { BlobStore, ImageRecord } from './blob-store.js';

/**
 * Where the garbage collector learns which top-level digests (an index or an image
 * manifest, as named in a prewarm job) this node must keep. The source of truth lives
 * outside the store (the operator's jobs in Redis, see store/redis-pins.ts); an
 * in-memory implementation serves tests and tools.
 */
export interface PinSource {
  /**
   * The pinned digests now. Throws when they cannot be known (Redis down): the caller
   * must then treat everything as pinned, never as unpinned.
   */
  pinned(signal?: AbortSignal): Promise<ReadonlySet<Digest>>;
}

/** A fixed, mutable set of pins (tests, the one-shot CLI). */
export class StaticPinSource implements PinSource {
  readonly digests = new Set<Digest>();
  /** When set, `pinned()` throws it (to exercise "pins unknown"). */
  failWith: Error | undefined;

  constructor(digests: Iterable<Digest> = []) {
    for (const d of digests) this.digests.add(d);
  }

  async pinned(): Promise<ReadonlySet<Digest>> {
    if (this.failWith) throw this.failWith;
    return new Set(this.digests);
  }
}

/**
 * Every digest needed to serve the images named by `roots`: the roots themselves, the
 * manifests and blobs of image records whose digest or manifest digest is a root, and —
 * for roots with no record yet (a download in progress or a failed one) — whatever the
 * manifests already in the store reference, walked from index to image manifests to
 * config and layers. Unreadable or missing manifests simply end the walk there.
 */
export async function digestClosure(
  store: BlobStore,
  roots: Iterable<Digest>,
  records: readonly ImageRecord[],
): Promise<Set<Digest>> {
  const out = new Set<Digest>();
  const byRoot = new Map<Digest, ImageRecord[]>();
  for (const r of records) {
    for (const key of new Set([r.digest, r.manifestDigest])) {
      const list = byRoot.get(key) ?? [];
      list.push(r);
      byRoot.set(key, list);
    }
  }
  const walk = async (d: Digest, depth: number): Promise<void> => {
    if (out.has(d)) return;
    out.add(d);
    for (const r of byRoot.get(d) ?? []) {
      for (const x of r.manifests) out.add(x);
      for (const x of r.blobs) out.add(x);
    }
    // Only manifests are worth parsing; a depth cap stops a hostile index from looping.
    if (depth > 2) return;
    const manifest = await readManifest(store, d);
    if (!manifest) return;
    if (manifest.kind === 'index') {
      for (const child of manifest.manifests) await walk(child.digest, depth + 1);
    } else {
      for (const b of manifestBlobs(manifest)) out.add(b.digest);
    }
  };
  for (const root of roots) await walk(root, 0);
  return out;
}

/** A stored manifest parsed, or undefined when absent, too large or not a manifest. */
export async function readManifest(store: BlobStore, digest: Digest): Promise<Manifest | undefined> {
  const info = await store.stat(digest);
  // Layers are large and not JSON: skip anything bigger than a manifest can be.
  if (!info || info.size > 4 * 1024 * 1024) return undefined;
  try {
    return parseManifest(await store.readBytes(digest));
  } catch {
    return undefined;
  }
}
