import { Job, type Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { PrewarmJobProgress } from '../../../oci/src/job-contract.js';
import { formatPlatform } from '../../../oci/src/platform.js';
import type { RuntimeImageService } from '../runtime/runtime-port.js';
import type { BlobStore } from '../store/blob-store.js';
import type { LeaseSet } from '../store/leases.js';
import { readNodeJobs } from '../store/redis-pins.js';
import { storedProgress } from './job-data.js';
import type { PrewarmProcessor } from './job-processor.js';
import type { AgentMetrics } from './metrics.js';

export interface WarmKeeperOptions {
  node: string;
  /** Period of the re-check. */
  intervalMs: number;
}

export interface WarmKeeperDeps {
  redis: Redis;
  /** This node's queue (to update completed jobs' progress with eviction counts). */
  queue: Queue;
  store: BlobStore;
  processor: PrewarmProcessor;
  /** Protects what a runtime re-import reads from garbage collection. */
  leases: LeaseSet;
  runtime?: RuntimeImageService | undefined;
  metrics: AgentMetrics;
  logger: Logger;
}

export interface RecheckReport {
  checked: number;
  /** Re-warmed because the store lost content (the registry is asked again). */
  storeRewarms: number;
  /** Re-imported because the runtime lost the image (served from the store, no registry traffic). */
  runtimeRewarms: number;
  failures: number;
}

/**
 * "Warm stays warm": every image this node should hold — a completed job with owners
 * in this node's queue — is checked on a period and on request (containerd image
 * deletion events, see containerd-events.ts): its record and every blob must be in
 * the store, and for `unpack` jobs the runtime must still have it (CRI ImageStatus;
 * kubelet's image GC and containerd's pruning remove images by design). What is
 * missing is re-warmed through the same processor as a job: from the store when only
 * the runtime lost it (containerd pulls through the node-local mirror), from the
 * registry when the store lost it too. Runtime losses are counted in the job's
 * progress (`evictions`) for the operator's status.
 */
export class WarmKeeper {
  readonly #opts: WarmKeeperOptions;
  readonly #deps: WarmKeeperDeps;
  #running: Promise<RecheckReport> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #requested: NodeJS.Timeout | undefined;
  #signal: AbortSignal | undefined;

  constructor(opts: WarmKeeperOptions, deps: WarmKeeperDeps) {
    this.#opts = opts;
    this.#deps = deps;
  }

  /** Runs a check now and then every `intervalMs` until `signal` aborts or `close`. */
  start(signal: AbortSignal): void {
    this.#signal = signal;
    const tick = () => {
      if (signal.aborted) return;
      this.recheck(signal)
        .catch((err: unknown) => this.#deps.logger.warn({ err }, 'warm re-check failed'))
        .finally(() => {
          if (!signal.aborted) this.#timer = setTimeout(tick, this.#opts.intervalMs);
        });
    };
    this.#timer = setTimeout(tick, 0);
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(this.#timer);
        clearTimeout(this.#requested);
      },
      { once: true },
    );
  }

  /**
   * Asks for a pass soon (a runtime event said an image was deleted). Requests within
   * `delayMs` are coalesced; a pass already running is followed by a fresh one, since it
   * may have checked the image before it went.
   */
  request(delayMs = 500): void {
    const signal = this.#signal;
    if (!signal || signal.aborted || this.#requested) return;
    this.#requested = setTimeout(() => {
      this.#requested = undefined;
      const run = () =>
        this.recheck(signal).catch((err: unknown) => this.#deps.logger.warn({ err }, 'warm re-check failed'));
      if (this.#running) void this.#running.finally(run);
      else void run();
    }, delayMs);
  }

  /** One pass over this node's completed jobs; concurrent calls share the pass in flight. */
  recheck(signal: AbortSignal): Promise<RecheckReport> {
    this.#running ??= this.#recheck(signal).finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async close(): Promise<void> {
    clearTimeout(this.#timer);
    clearTimeout(this.#requested);
    await this.#running?.catch(() => undefined);
  }

  async #recheck(signal: AbortSignal): Promise<RecheckReport> {
    const { redis, store, processor, runtime, metrics, logger, leases } = this.#deps;
    const report: RecheckReport = { checked: 0, storeRewarms: 0, runtimeRewarms: 0, failures: 0 };
    for (const stored of await readNodeJobs(redis, this.#opts.node)) {
      if (signal.aborted) break;
      const owners = stored.data.owners;
      if (!stored.completed || !Array.isArray(owners) || owners.length === 0) continue;
      let parsed: ReturnType<PrewarmProcessor['parse']>;
      try {
        parsed = processor.parse(stored.data);
      } catch {
        continue;
      }
      report.checked++;
      const { data, ref, platform } = parsed;
      const repository = `${ref.registry}/${ref.repository}`;
      const image = `${data.repository}@${data.digest}`;
      const log = logger.child({ job: stored.id, image, node: this.#opts.node });
      try {
        const record = await store.getImage(repository, data.digest, formatPlatform(platform));
        let storeOk = record !== undefined;
        for (const d of record ? [...record.manifests, ...record.blobs] : []) {
          if (!storeOk) break;
          storeOk = (await store.stat(d)) !== undefined;
        }
        const runtimeLost =
          data.mode === 'unpack' &&
          runtime !== undefined &&
          (await runtime.imageStatus(image, { signal })) === undefined;
        if (storeOk && !runtimeLost) continue;
        const cause = runtimeLost ? 'runtime' : 'store';
        log.warn({ cause, storeOk }, 'warm image lost; re-warming');
        metrics.rewarms.inc({ cause });
        const floor = storedProgress(stored.progress);
        let job: Job | undefined;
        const jobHandle = async () => {
          job ??= await Job.fromId(this.#deps.queue, stored.id);
          return job;
        };
        if (storeOk) {
          // Only the runtime lost it: import from the store through the mirror, no registry traffic.
          const lease = leases.acquire([
            data.digest,
            ...(record ? [...record.manifests, ...record.blobs] : []),
          ]);
          try {
            // By digest, then by tag as the job did: kubelet looks pods' images up by the
            // reference they name, so a re-import without the tag would not be found.
            await processor.importToRuntime(parsed, signal, log);
          } finally {
            lease.release();
          }
        } else {
          await processor.process(
            {
              id: stored.id,
              data: stored.data,
              progress: stored.progress,
              updateProgress: async (p: PrewarmJobProgress) => {
                await (await jobHandle())?.updateProgress({
                  ...p,
                  ...(floor?.evictions ? { evictions: floor.evictions } : {}),
                });
              },
            },
            signal,
          );
        }
        if (runtimeLost) {
          report.runtimeRewarms++;
          const base = floor ?? {
            phase: 'unpacked' as const,
            bytesDone: 0,
            bytesTotal: 0,
            layersDone: 0,
            layersTotal: 0,
          };
          await (await jobHandle())?.updateProgress({ ...base, evictions: (floor?.evictions ?? 0) + 1 });
        } else report.storeRewarms++;
      } catch (err) {
        report.failures++;
        log.warn({ err }, 're-warm failed; will try again at the next re-check');
      }
    }
    return report;
  }
}
