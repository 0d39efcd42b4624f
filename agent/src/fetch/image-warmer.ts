import type { RegistryClient } from '../../../oci/src/client.js';
import type { Digest } from '../../../oci/src/digest.js';
import { abortError } from '../../../oci/src/errors.js';
import { type Descriptor, manifestBlobs } from '../../../oci/src/manifest.js';
import { formatPlatform, type Platform } from '../../../oci/src/platform.js';
import { formatReference, type ImageReference } from '../../../oci/src/reference.js';
import type { BlobStore, ImageRecord } from '../store/blob-store.js';
import type { BlobFetcher, FetchResult } from './blob-fetcher.js';
import type { PeerDirectory } from './peer-directory.js';
import { type BlobSource, type BlobTarget, RegistrySource } from './sources.js';

export type WarmPhase = 'resolving' | 'fetching' | 'warm';

export interface BlobProgress {
  digest: Digest;
  mediaType: string;
  size: number;
  bytesDone: number;
  done: boolean;
}

export interface WarmProgress {
  phase: WarmPhase;
  /** The image manifest digest, once resolved. */
  manifestDigest?: Digest;
  bytesDone: number;
  bytesTotal: number;
  layersDone: number;
  layersTotal: number;
  blobs: BlobProgress[];
}

export interface WarmOptions {
  platform: Platform;
  signal?: AbortSignal;
  /** Called on every change; cheap, so throttle rendering on your side. */
  onProgress?: (p: WarmProgress) => void;
  /** Peer agents that may hold blobs, tried before the registry. */
  peers?: BlobSource[];
  /** Where to look up which peers hold each blob, and to announce what this node now holds. */
  peerDirectory?: PeerDirectory;
  /** Blobs downloaded at once (each with its own parallel ranges). Default 3. */
  blobConcurrency?: number;
}

export interface WarmResult {
  reference: string;
  record: ImageRecord;
  blobs: FetchResult[];
  bytesTotal: number;
  bytesFromRegistry: number;
  bytesFromPeers: number;
  bytesAlreadyPresent: number;
  durationMs: number;
}

/**
 * Warms one image into the store: resolves the reference (index → platform manifest),
 * stores the verified manifests, fetches config and layers (earlier layers first),
 * and records the image so the mirror and GC know it.
 */
export class ImageWarmer {
  constructor(
    readonly client: RegistryClient,
    readonly fetcher: BlobFetcher,
    readonly store: BlobStore,
  ) {}

  async warm(ref: ImageReference, opts: WarmOptions): Promise<WarmResult> {
    const started = performance.now();
    const progress: WarmProgress = {
      phase: 'resolving',
      bytesDone: 0,
      bytesTotal: 0,
      layersDone: 0,
      layersTotal: 0,
      blobs: [],
    };
    const emit = () => opts.onProgress?.(progress);
    emit();
    const resolved = await this.client.resolveImage(ref, opts.platform, opts.signal);
    if (resolved.index) await this.store.putBytes(resolved.index.digest, resolved.index.bytes);
    await this.store.putBytes(resolved.image.digest, resolved.image.bytes);
    const manifest = resolved.image.manifest;
    const descriptors = manifestBlobs(manifest);
    progress.phase = 'fetching';
    progress.manifestDigest = resolved.image.digest;
    progress.layersTotal = manifest.layers.length;
    progress.bytesTotal = descriptors.reduce((n, d) => n + d.size, 0);
    progress.blobs = descriptors.map((d) => ({
      digest: d.digest,
      mediaType: d.mediaType,
      size: d.size,
      bytesDone: 0,
      done: false,
    }));
    emit();

    const registrySource = new RegistrySource(this.client, ref.registry);
    const directory = opts.peerDirectory;
    const sourcesFor = async (digest: Digest): Promise<BlobSource[]> => {
      // A directory outage must not stop a warm: the registry is always the last source.
      const holders = directory ? await directory.holders(digest).catch(() => []) : [];
      return [...(opts.peers ?? []), ...holders, registrySource];
    };
    const results: FetchResult[] = new Array(descriptors.length);
    let next = 0;
    const worker = async () => {
      while (next < descriptors.length) {
        if (opts.signal?.aborted) throw abortError(opts.signal);
        const i = next++;
        const d = descriptors[i] as Descriptor;
        const bp = progress.blobs[i] as BlobProgress;
        const target: BlobTarget = {
          registry: ref.registry,
          repository: ref.repository,
          digest: d.digest,
          size: d.size,
          mediaType: d.mediaType,
        };
        const r = await this.fetcher.fetch(target, {
          sources: await sourcesFor(d.digest),
          ...(opts.signal ? { signal: opts.signal } : {}),
          onProgress: (p) => {
            progress.bytesDone += p.bytesDone - bp.bytesDone;
            bp.bytesDone = p.bytesDone;
            emit();
          },
        });
        progress.bytesDone += d.size - bp.bytesDone;
        bp.bytesDone = d.size;
        bp.done = true;
        if (i > 0) progress.layersDone++;
        results[i] = r;
        await directory?.announce(d.digest).catch(() => undefined);
        emit();
      }
    };
    const n = Math.max(1, Math.min(opts.blobConcurrency ?? 3, descriptors.length));
    await Promise.all(Array.from({ length: n }, worker));

    const record: ImageRecord = {
      repository: `${ref.registry}/${ref.repository}`,
      ...(ref.tag ? { tag: ref.tag } : {}),
      digest: resolved.digest,
      manifestDigest: resolved.image.digest,
      platform: formatPlatform(opts.platform),
      manifests: resolved.index ? [resolved.index.digest, resolved.image.digest] : [resolved.image.digest],
      blobs: descriptors.map((d) => d.digest),
      size: progress.bytesTotal + resolved.image.bytes.byteLength + (resolved.index?.bytes.byteLength ?? 0),
      warmedAt: Date.now(),
    };
    await this.store.putImage(record);
    progress.phase = 'warm';
    emit();
    const sum = (f: (r: FetchResult) => number) => results.reduce((n, r) => n + f(r), 0);
    return {
      reference: formatReference({ ...ref, digest: resolved.digest }),
      record,
      blobs: results,
      bytesTotal: progress.bytesTotal,
      bytesFromRegistry: sum((r) => r.bytesFromRegistry),
      bytesFromPeers: sum((r) => r.bytesFromPeers),
      bytesAlreadyPresent: sum((r) => r.bytesAlreadyPresent),
      durationMs: performance.now() - started,
    };
  }
}
