import type { RegistryClient, ResolvedImage } from '../../../oci/src/client.js';
import { eachLimited } from '../../../oci/src/concurrency.js';
import type { Digest } from '../../../oci/src/digest.js';
import { abortError } from '../../../oci/src/errors.js';
import { type Descriptor, manifestBlobs } from '../../../oci/src/manifest.js';
import { formatPlatform, type Platform } from '../../../oci/src/platform.js';
import { formatReference, type ImageReference } from '../../../oci/src/reference.js';
import type { BlobStore, ImageRecord } from '../store/blob-store.js';
import type { ProbeOptions } from './estargz.js';
import { StartupFirst, type StartupSummary } from './estargz-startup.js';
import type { Fetcher, FetchResult } from './fetcher.js';
import type { PeerDirectory } from './peer-directory.js';
import { type BlobSource, type BlobTarget, RegistrySource } from './sources.js';

/**
 * `startup-ready` (images with eStargz layers only, and only when reached before `warm`):
 * every eStargz layer's startup region (prefetch files, TOC, footer) is on disk and
 * verified against its TOC's chunk digests, and every other blob is committed.
 */
export type WarmPhase = 'resolving' | 'fetching' | 'startup-ready' | 'warm';

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
  /**
   * Startup-first for eStargz layers (toc.digest annotation): their startup regions are
   * fetched before any layer's bulk, and 'startup-ready' is reported. Default true.
   */
  startupFirst?: boolean;
  /** eStargz probe options (e.g. `probeUnannotated`). */
  estargz?: ProbeOptions;
  /**
   * Cap in bytes/s for each blob download this warm starts, on top of the fetcher's
   * node-wide cap (FetchOptions.bandwidthBytesPerSec). Absent or 0: node-wide cap only.
   */
  bandwidthBytesPerSec?: number;
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
  /** What startup-first did; absent when the image has no eStargz layer. */
  startup?: StartupSummary;
}

/**
 * Warms one image into the store: resolves the reference (index → platform manifest),
 * stores the verified manifests, fetches config and layers (earlier layers first),
 * and records the image so the mirror and GC know it.
 */
export class ImageWarmer {
  constructor(
    readonly client: RegistryClient,
    readonly fetcher: Fetcher,
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
    const descriptors = manifestBlobs(resolved.image.manifest);
    startFetching(progress, resolved, descriptors);
    emit();

    const registrySource = new RegistrySource(this.client, ref.registry);
    const directory = opts.peerDirectory;
    const sourcesFor = async (digest: Digest): Promise<BlobSource[]> => {
      // A directory outage must not stop a warm: the registry is always the last source.
      const holders = directory ? await directory.holders(digest).catch(() => []) : [];
      return [...(opts.peers ?? []), ...holders, registrySource];
    };
    const targetOf = (d: Descriptor): BlobTarget => ({
      registry: ref.registry,
      repository: ref.repository,
      digest: d.digest,
      size: d.size,
      mediaType: d.mediaType,
    });
    // eStargz layers: their startup regions first, 'startup-ready' once verified (estargz-startup.ts).
    const startup =
      opts.startupFirst === false
        ? undefined
        : await StartupFirst.plan(descriptors, {
            fetcher: this.fetcher,
            store: this.store,
            sourcesFor,
            target: targetOf,
            ...(opts.signal ? { signal: opts.signal } : {}),
            ...(opts.estargz ? { probe: opts.estargz } : {}),
          });
    if (startup) {
      startup.onReady = () => {
        progress.phase = 'startup-ready';
        emit();
      };
    }
    const results: FetchResult[] = new Array(descriptors.length);
    const fetchOne = async (i: number) => {
      const d = descriptors[i] as Descriptor;
      const bp = progress.blobs[i] as BlobProgress;
      const r = await this.fetcher.fetch(targetOf(d), {
        sources: await sourcesFor(d.digest),
        ...(opts.signal ? { signal: opts.signal } : {}),
        ...(opts.bandwidthBytesPerSec ? { bandwidthBytesPerSec: opts.bandwidthBytesPerSec } : {}),
        ...startup?.fetchOptions(i),
        onProgress: (p) => {
          progress.bytesDone += p.bytesDone - bp.bytesDone;
          bp.bytesDone = p.bytesDone;
          startup?.progress(i);
          emit();
        },
      });
      progress.bytesDone += d.size - bp.bytesDone;
      bp.bytesDone = d.size;
      bp.done = true;
      if (i > 0) progress.layersDone++;
      results[i] = r;
      await directory?.announce(d.digest).catch(() => undefined);
      startup?.done(i);
      emit();
    };
    const order = startup?.order ?? descriptors.map((_, i) => i);
    try {
      startup?.begin(fetchOne);
      await eachLimited(order, opts.blobConcurrency ?? 3, async (i) => {
        if (opts.signal?.aborted) throw abortError(opts.signal);
        await (startup?.run(i) ?? fetchOne(i));
      });
    } finally {
      startup?.close();
    }

    const record = imageRecord(ref, resolved, descriptors, opts.platform, progress.bytesTotal);
    await this.store.putImage(record);
    progress.phase = 'warm';
    emit();
    return {
      reference: formatReference({ ...ref, digest: resolved.digest }),
      record,
      blobs: results,
      bytesTotal: progress.bytesTotal,
      ...byteCounts(results),
      durationMs: performance.now() - started,
      ...(startup ? { startup: startup.summary } : {}),
    };
  }
}

/** Moves `progress` to 'fetching': the manifest is known, every blob listed with nothing done. */
function startFetching(
  progress: WarmProgress,
  resolved: ResolvedImage,
  descriptors: readonly Descriptor[],
): void {
  progress.phase = 'fetching';
  progress.manifestDigest = resolved.image.digest;
  progress.layersTotal = resolved.image.manifest.layers.length;
  progress.bytesTotal = descriptors.reduce((n, d) => n + d.size, 0);
  progress.blobs = descriptors.map((d) => ({
    digest: d.digest,
    mediaType: d.mediaType,
    size: d.size,
    bytesDone: 0,
    done: false,
  }));
}

/** The record of a warmed image: what the mirror serves and GC keeps together. */
function imageRecord(
  ref: ImageReference,
  resolved: ResolvedImage,
  descriptors: readonly Descriptor[],
  platform: Platform,
  bytesTotal: number,
): ImageRecord {
  return {
    repository: `${ref.registry}/${ref.repository}`,
    ...(ref.tag ? { tag: ref.tag } : {}),
    digest: resolved.digest,
    manifestDigest: resolved.image.digest,
    platform: formatPlatform(platform),
    manifests: resolved.index ? [resolved.index.digest, resolved.image.digest] : [resolved.image.digest],
    blobs: descriptors.map((d) => d.digest),
    size: bytesTotal + resolved.image.bytes.byteLength + (resolved.index?.bytes.byteLength ?? 0),
    warmedAt: Date.now(),
  };
}

/** Byte counts of a warm's fetches. */
function byteCounts(
  results: readonly FetchResult[],
): Pick<WarmResult, 'bytesFromRegistry' | 'bytesFromPeers' | 'bytesAlreadyPresent'> {
  // A blob listed twice (or joined from another warm) was downloaded once: count it once.
  const unique = [...new Map(results.map((r) => [r.digest, r])).values()];
  const sum = (f: (r: FetchResult) => number) => unique.reduce((n, r) => n + f(r), 0);
  return {
    bytesFromRegistry: sum((r) => r.bytesFromRegistry),
    bytesFromPeers: sum((r) => r.bytesFromPeers),
    bytesAlreadyPresent: sum((r) => r.bytesAlreadyPresent),
  };
}
