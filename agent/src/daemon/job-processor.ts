import type { Logger } from 'pino';
import type { Digest } from '../../../oci/src/digest.js';
import type { EgressPolicy } from '../../../oci/src/egress-policy.js';
import { type ErrorCode, ErrorCodes, isPrewarmError, PrewarmError } from '../../../oci/src/errors.js';
import {
  formatFailure,
  type PrewarmJobProgress,
  type PrewarmJobResult,
} from '../../../oci/src/job-contract.js';
import type { ImageWarmer, WarmProgress, WarmResult } from '../fetch/image-warmer.js';
import type { PeerDirectory } from '../fetch/peer-directory.js';
import type { MirrorRoute } from '../runtime/mirror-route.js';
import type { RuntimeImageService } from '../runtime/runtime-port.js';
import { type UnpackResult, unpackImage } from '../runtime/unpack.js';
import type { BlobStore, ImageRecord } from '../store/blob-store.js';
import type { BlobWant, GarbageCollector, GcReport, Reservation } from '../store/gc.js';
import type { LeaseSet } from '../store/leases.js';
import { formatBytes } from '../util/format.js';
import { type ParsedJob, parseJobData, storedProgress } from './job-data.js';
import type { AgentMetrics } from './metrics.js';
import { ProgressReporter } from './progress-reporter.js';
import type { PullSecretJob } from './pull-secrets.js';

/** Code for failures that are not PrewarmErrors (bugs, unexpected library errors). */
export const INTERNAL_ERROR_CODE = 'PW_ERR_INTERNAL';

/**
 * Codes that fail the same way however often they are retried: the job fails at once
 * (BullMQ UnrecoverableError) and the operator shows the reason.
 */
const PERMANENT: ReadonlySet<string> = new Set<ErrorCode>([
  ErrorCodes.MANIFEST_UNKNOWN,
  ErrorCodes.PLATFORM_NOT_FOUND,
  ErrorCodes.AUTH_DENIED,
  ErrorCodes.INVALID_REFERENCE,
  ErrorCodes.INVALID_DIGEST,
  ErrorCodes.INVALID_CONFIG,
  ErrorCodes.MANIFEST_INVALID,
  ErrorCodes.MANIFEST_TOO_LARGE,
  ErrorCodes.UNSUPPORTED_MEDIA_TYPE,
  ErrorCodes.BLOB_UNKNOWN,
]);

/**
 * A job attempt's failure as the worker reports it: `reason` is `<code>: <message>`
 * (job-contract `formatFailure`); `permanent` failures are not retried.
 */
export class JobFailure extends Error {
  readonly code: string;
  /** The message without the code. */
  readonly detail: string;
  readonly permanent: boolean;

  constructor(code: string, message: string, permanent: boolean, cause?: unknown) {
    super(formatFailure(code, message), cause === undefined ? undefined : { cause });
    this.name = 'JobFailure';
    this.code = code;
    this.detail = message;
    this.permanent = permanent;
  }
}

/** Maps any error to a JobFailure (permanent by code; `detail.permanent` overrides). */
export function classifyFailure(err: unknown): JobFailure {
  if (err instanceof JobFailure) return err;
  if (isPrewarmError(err)) {
    const forced = err.detail?.permanent;
    const permanent = typeof forced === 'boolean' ? forced : PERMANENT.has(err.code);
    return new JobFailure(err.code, err.message, permanent, err);
  }
  const message = err instanceof Error ? err.message : String(err);
  return new JobFailure(INTERNAL_ERROR_CODE, message, false, err);
}

/** The job surface the processor needs (a BullMQ `Job` has it). */
export interface PrewarmJobHandle {
  readonly id?: string | undefined;
  readonly data: unknown;
  /** Progress stored by an earlier attempt, if any. */
  readonly progress: unknown;
  updateProgress(p: PrewarmJobProgress): Promise<void>;
}

export interface PrewarmProcessorOptions {
  node: string;
  /** Platform for jobs that name none (`os/arch[/variant]`). */
  defaultPlatform: string;
  /** Blobs of one image downloaded at once. */
  blobConcurrency: number;
  /** Least time between two progress reports of the same phase. Default 500 ms. */
  progressIntervalMs?: number;
}

export interface PrewarmProcessorDeps {
  warmer: ImageWarmer;
  store: BlobStore;
  gc: GarbageCollector;
  leases: LeaseSet;
  metrics: AgentMetrics;
  logger: Logger;
  /** Needed for `unpack` jobs and runtime re-checks; absent = `unpack` jobs fail permanently. */
  runtime?: RuntimeImageService | undefined;
  /**
   * Holds the job's blob downloads (fetches made with `signal`) until `ready` settles
   * (GatedFetcher.gate), so nothing is downloaded before room is reserved.
   */
  gate?: (signal: AbortSignal, ready: Promise<void>) => void;
  /** Peers holding blobs, asked before the registry; this node announces what it stores. */
  peerDirectory?: PeerDirectory | undefined;
  /**
   * The node's egress policy. A job naming a registry it does not allow fails permanently
   * with PW_ERR_EGRESS_DENIED before anything else happens: no pull secret is read and no
   * connection made for it. Jobs arrive through Redis, which every agent can write
   * (docs/security.md, Redis), so this is checked here and not only by the registry client.
   */
  egress?: EgressPolicy | undefined;
  /**
   * A warmer for a job that names pull secrets (`namespace/name`), whose registry client
   * tries those secrets' credentials before the node-wide ones; `close` releases it after
   * the job. `job` (owners, registry) is what the references are checked against: a Secret
   * of a namespace none of the owners is in, or a copy made for someone else, is refused
   * before anything is read. Throws PW_ERR_AUTH_FAILED (`pull secret <ns>/<name>: ...`,
   * permanent) when a secret is refused or cannot be used. Absent (reading secrets
   * disabled): a job's `pullSecrets` are ignored.
   */
  warmerFor?: (pullSecrets: readonly string[], job: PullSecretJob) => Promise<JobWarmer>;
  /**
   * Whether containerd pulls a registry through the node mirror yet (its hosts.toml). An
   * unpack waits for it, so the runtime reads the store instead of the registry.
   */
  mirrorRoute?: MirrorRoute | undefined;
}

/** A warmer scoped to one job (see `PrewarmProcessorDeps.warmerFor`). */
export interface JobWarmer {
  warmer: ImageWarmer;
  close(): Promise<void>;
}

/**
 * Runs one prewarm job: validates it, leases its digests against garbage collection,
 * makes room within the disk budget, warms the image into the store (resuming partial
 * downloads), checks every blob is really there, and in `unpack` mode has the runtime
 * pull it (through the node-local mirror). Progress goes to the job in order.
 *
 * Throws `JobFailure` (reason `<code>: <message>`, `permanent` or not); an abort from
 * `signal` surfaces as a JobFailure with code PW_ERR_ABORTED for the caller to handle.
 */
export class PrewarmProcessor {
  readonly #opts: Required<PrewarmProcessorOptions>;
  readonly #deps: PrewarmProcessorDeps;

  constructor(opts: PrewarmProcessorOptions, deps: PrewarmProcessorDeps) {
    this.#opts = { progressIntervalMs: 500, ...opts };
    this.#deps = deps;
  }

  /** Parses a job's data for this node; throws a permanent JobFailure when it is invalid. */
  parse(raw: unknown): ParsedJob {
    try {
      return parseJobData(raw, this.#opts.node, this.#opts.defaultPlatform);
    } catch (err) {
      const f = classifyFailure(err);
      throw new JobFailure(f.code, f.detail, true, err);
    }
  }

  /**
   * Imports a warmed image into the runtime (CRI PullImage by digest, then by `tag`), once
   * containerd pulls its registry through the node mirror (or after the route wait, with a
   * warning). Used by `unpack` jobs and by the re-import after the runtime lost an image.
   */
  async importToRuntime(parsed: ParsedJob, signal: AbortSignal, log: Logger): Promise<UnpackResult> {
    const { data } = parsed;
    const route = await this.#deps.mirrorRoute?.wait(parsed.ref.registry, signal);
    if (route?.outcome === 'timeout')
      log.warn(
        { registry: parsed.ref.registry, file: route.file, waitedMs: route.waitedMs },
        'containerd is not pointed at the node mirror for this registry yet: the unpack pulls from the registry',
      );
    else if (route?.outcome === 'routed' && route.waitedMs > 0)
      log.info(
        { registry: parsed.ref.registry, waitedMs: route.waitedMs },
        'containerd now pulls through the mirror',
      );
    return unpackImage(
      this.#deps.runtime!,
      { repository: data.repository, digest: data.digest, ...(data.tag ? { tag: data.tag } : {}) },
      { signal },
    );
  }

  async process(job: PrewarmJobHandle, signal: AbortSignal): Promise<PrewarmJobResult> {
    const parsed = this.parse(job.data);
    const { data } = parsed;
    try {
      this.#deps.egress?.assertRegistry(parsed.ref.registry);
    } catch (err) {
      throw classifyFailure(err);
    }
    const log = this.#deps.logger.child({
      job: job.id,
      image: `${data.repository}@${data.digest}`,
      node: this.#opts.node,
      prewarm: data.owners.map((o) => `${o.namespace}/${o.name}`),
    });
    const reporter = new ProgressReporter((p) => job.updateProgress(p), {
      minIntervalMs: this.#opts.progressIntervalMs,
      ...(storedProgress(job.progress) ? { floor: storedProgress(job.progress) } : {}),
      onError: (err) => log.debug({ err }, 'progress report failed'),
    });
    if (data.mode === 'unpack' && !this.#deps.runtime) {
      throw new JobFailure(
        ErrorCodes.INVALID_CONFIG,
        'unpack mode needs a container runtime, and this agent has no containerd socket configured',
        true,
      );
    }
    const lease = this.#deps.leases.acquire([data.digest]);
    let jobWarmer: JobWarmer | undefined;
    try {
      log.info({ mode: data.mode, trigger: data.trigger }, 'prewarm job started');
      const pullSecrets = data.pullSecrets ?? [];
      if (pullSecrets.length > 0 && this.#deps.warmerFor) {
        // Names only: secret contents never reach a log.
        log.debug({ pullSecrets }, 'using pull secrets for this job');
        jobWarmer = await this.#deps.warmerFor(pullSecrets, {
          owners: data.owners,
          registry: parsed.ref.registry,
        });
      } else if (pullSecrets.length > 0) {
        log.warn(
          { pullSecrets },
          'job names pull secrets but reading them is disabled (KUBE_PREWARM_READ_PULL_SECRETS); using node-wide credentials',
        );
      }
      const warmer = jobWarmer?.warmer ?? this.#deps.warmer;
      const result = await this.#warm(parsed, warmer, reporter, lease, signal, log);
      let phase: PrewarmJobResult['phase'] = 'warm';
      if (data.mode === 'unpack') {
        // By digest (exactly what was warmed), then by tag: kubelet looks pods' images up by
        // the reference they name, and a tag still on this digest costs no transfer.
        const unpacked = await this.importToRuntime(parsed, signal, log);
        if (unpacked.tagMatches === false)
          log.warn(
            { tag: data.tag },
            'the tag moved upstream since it was resolved: unpacked the digest, the tag names another image',
          );
        phase = 'unpacked';
        reporter.update(finalProgress(result, phase));
      }
      await reporter.flush();
      for (const [source, n] of [
        ['peer', result.bytesFromPeers],
        ['present', result.bytesAlreadyPresent],
      ] as const)
        if (n > 0) this.#deps.metrics.bytesFetched.inc({ source }, n);
      log.info(
        {
          phase,
          manifest: result.record.manifestDigest,
          bytesTotal: result.bytesTotal,
          bytesFromRegistry: result.bytesFromRegistry,
          bytesAlreadyPresent: result.bytesAlreadyPresent,
          durationMs: Math.round(result.durationMs),
        },
        'prewarm job done',
      );
      return {
        phase,
        manifestDigest: result.record.manifestDigest,
        bytesTotal: result.bytesTotal,
        bytesFromRegistry: result.bytesFromRegistry,
        bytesFromPeers: result.bytesFromPeers,
        bytesAlreadyPresent: result.bytesAlreadyPresent,
        durationMs: Math.round(result.durationMs),
      };
    } catch (err) {
      // Progress already queued still goes out, in order, before the failure is recorded.
      await reporter.flush();
      throw classifyFailure(err);
    } finally {
      lease.release();
      await jobWarmer?.close().catch(() => undefined);
      await reporter.close();
    }
  }

  /**
   * Warms the image into the store, making room first. On ENOSPC it collects garbage
   * once and resumes; a record whose blobs vanished (a race with eviction) is warmed
   * again, which fetches only what is missing.
   */
  async #warm(
    { ref, platform, data }: ParsedJob,
    warmer: ImageWarmer,
    reporter: ProgressReporter,
    lease: ReturnType<LeaseSet['acquire']>,
    signal: AbortSignal,
    log: Logger,
  ): Promise<WarmResult> {
    const { gc } = this.#deps;
    const bandwidth = data.bandwidthBytesPerSec;
    let reservation: Reservation | undefined;
    let wants: BlobWant[] = [];
    const budgetAbort = new AbortController();
    const jobSignal = AbortSignal.any([signal, budgetAbort.signal]);
    let reserving: Promise<void> | undefined;
    let diskFullRetried = false;
    try {
      for (let pass = 0; ; pass++) {
        let result: WarmResult;
        try {
          result = await warmer.warm(ref, {
            platform,
            signal: jobSignal,
            blobConcurrency: this.#opts.blobConcurrency,
            // The job's own cap, on top of the node-wide one (0 or absent: node cap only).
            ...(typeof bandwidth === 'number' && bandwidth > 0 ? { bandwidthBytesPerSec: bandwidth } : {}),
            ...(this.#deps.peerDirectory ? { peerDirectory: this.#deps.peerDirectory } : {}),
            onProgress: (p: WarmProgress) => {
              reporter.update(progressOf(p));
              if (p.phase !== 'fetching' || reserving) return;
              // Synchronous, before any blob is looked up: GC must not evict what this job needs.
              wants = p.blobs.map((b) => ({ digest: b.digest, size: b.size }));
              lease.add([...(p.manifestDigest ? [p.manifestDigest] : []), ...wants.map((w) => w.digest)]);
              reserving = gc.reserve(wants).then(
                (r) => {
                  reservation = r;
                  if (r.report.satisfied) return;
                  const imageBytes = wants.reduce((n, w) => n + w.size, 0);
                  budgetAbort.abort(diskFullError(undefined, r.report, imageBytes > r.report.budgetBytes));
                },
                (err: unknown) => log.warn({ err }, 'garbage collection before download failed'),
              );
              this.#deps.gate?.(jobSignal, reserving);
            },
          });
        } catch (err) {
          await reserving;
          if (!isPrewarmError(err, ErrorCodes.DISK_FULL) || signal.aborted) throw err;
          if (err.detail?.report !== undefined || diskFullRetried) throw err;
          // The filesystem filled up under us: make room once and resume.
          diskFullRetried = true;
          const report = await gc.collect({ reason: 'disk-full', want: wants });
          log.warn({ report: summarize(report) }, 'disk full during download');
          if (report.satisfied || report.freedBytes > 0 || report.removedIngests > 0) continue;
          throw diskFullError(err, report, false);
        }
        const missing = await this.#missing(result.record);
        if (missing.length === 0) return result;
        if (pass >= 2) {
          throw new PrewarmError(
            ErrorCodes.STORE_CORRUPT,
            `blobs vanished from the store right after download: ${missing.join(', ')}`,
          );
        }
        log.warn({ missing }, 'blobs missing after warm; warming again');
      }
    } finally {
      await reserving;
      reservation?.release();
    }
  }

  async #missing(record: ImageRecord): Promise<Digest[]> {
    const out: Digest[] = [];
    for (const d of [...record.manifests, ...record.blobs])
      if (!(await this.#deps.store.stat(d))) out.push(d);
    return out;
  }
}

function progressOf(p: WarmProgress): PrewarmJobProgress {
  return {
    phase: p.phase,
    bytesDone: p.bytesDone,
    bytesTotal: p.bytesTotal,
    layersDone: p.layersDone,
    layersTotal: p.layersTotal,
  };
}

function finalProgress(r: WarmResult, phase: PrewarmJobResult['phase']): PrewarmJobProgress {
  const layers = Math.max(0, r.record.blobs.length - 1);
  return {
    phase,
    bytesDone: r.bytesTotal,
    bytesTotal: r.bytesTotal,
    layersDone: layers,
    layersTotal: layers,
  };
}

function summarize(r: GcReport): Record<string, unknown> {
  return {
    reason: r.reason,
    budgetBytes: r.budgetBytes,
    usageBefore: r.usageBefore,
    usageAfter: r.usageAfter,
    needBytes: r.needBytes,
    protectedBytes: r.protectedBytes,
    availableBytes: r.availableBytes,
    evictedImages: r.evictedImages.length,
    freedBytes: r.freedBytes,
    satisfied: r.satisfied,
  };
}

/**
 * PW_ERR_DISK_FULL with the numbers an operator needs to act: what the store uses, its
 * budget, free space, what is pinned, what the job still needs. `permanent` when the
 * image can never fit (it alone is larger than the budget); otherwise the job is
 * retried, since pins may be released or space freed meanwhile.
 */
export function diskFullError(
  cause: PrewarmError | undefined,
  r: GcReport,
  permanent: boolean,
): PrewarmError {
  const budget = Number.isFinite(r.budgetBytes) ? formatBytes(r.budgetBytes) : 'unlimited';
  const what = cause ? cause.message : 'not enough room within the store budget';
  const message =
    `${what}; store uses ${formatBytes(r.usageAfter)} of a ${budget} budget, ` +
    `${formatBytes(r.protectedBytes)} pinned or in use, ${formatBytes(r.availableBytes)} free on the filesystem, ` +
    `${formatBytes(r.needBytes)} still to download`;
  return new PrewarmError(ErrorCodes.DISK_FULL, message, {
    cause,
    detail: { report: summarize(r), permanent },
  });
}
