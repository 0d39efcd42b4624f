/**
 * Stand-in node agents for the operator tests: one BullMQ Worker per node queue that
 * does the real work of a cache-mode prewarm (resolve the platform manifest, fetch and
 * verify every blob from the real registry into a per-node directory) and reports
 * progress and the result exactly as oci/src/job-contract.ts specifies. Failures can be
 * injected per node. Not a fake of the operator's side: the operator under test sees
 * real jobs moving through real Redis.
 */
import { createHash } from 'node:crypto';
import { mkdir, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Job, UnrecoverableError, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import type { CredentialProvider } from '../../oci/src/auth.js';
import { RegistryClient } from '../../oci/src/client.js';
import { digestHex } from '../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError } from '../../oci/src/errors.js';
import {
  formatFailure,
  JOB_SCHEMA_VERSION,
  nodeQueueName,
  PREWARM_JOB_NAME,
  type PrewarmJobData,
  type PrewarmJobProgress,
  type PrewarmJobResult,
  QUEUE_PREFIX,
} from '../../oci/src/job-contract.js';
import { manifestBlobs } from '../../oci/src/manifest.js';
import { parsePlatform } from '../../oci/src/platform.js';
import { parseReference } from '../../oci/src/reference.js';

export interface SimAgentOptions {
  node: string;
  /** Shared connection for non-blocking commands is not enough: Workers block. A factory. */
  connection: () => Redis;
  /** Per-node store directory (`blobs/sha256/<hex>`). */
  storeDir: string;
  /** Return an error code to fail the job unrecoverably (e.g. simulate a broken disk). */
  failWith?: (data: PrewarmJobData) => string | undefined;
  /** Waits this long (ms) per blob before fetching, to keep jobs in flight for a while. */
  blobDelayMs?: number;
  /** Registry credentials (what the agent would read from the job's pull secrets). */
  credentials?: CredentialProvider;
  /** Called when a job starts (before any fetch). */
  onStart?: (job: Job<PrewarmJobData>) => void | Promise<void>;
  /** Called when the processor is about to return or throw (before BullMQ records the outcome). */
  onEnd?: (job: Job<PrewarmJobData>) => void;
}

/** A running simulated agent. `processed` counts how often each job id ran to completion. */
export class SimAgent {
  readonly node: string;
  readonly processed = new Map<string, number>();
  readonly started = new Map<string, number>();
  readonly #worker: Worker<PrewarmJobData, PrewarmJobResult>;
  readonly #client: RegistryClient;
  readonly #conn: Redis;

  constructor(opts: SimAgentOptions) {
    this.node = opts.node;
    this.#client = new RegistryClient({
      retry: { attempts: 2, baseDelayMs: 50 },
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
    });
    this.#conn = opts.connection();
    this.#conn.on('error', () => {
      // Reconnect noise after Redis stops at teardown.
    });
    this.#worker = new Worker<PrewarmJobData, PrewarmJobResult>(
      nodeQueueName(opts.node),
      async (job) => {
        this.started.set(job.id ?? '', (this.started.get(job.id ?? '') ?? 0) + 1);
        try {
          await opts.onStart?.(job);
          const result = await this.#process(job, opts);
          this.processed.set(job.id ?? '', (this.processed.get(job.id ?? '') ?? 0) + 1);
          return result;
        } finally {
          opts.onEnd?.(job);
        }
      },
      { connection: this.#conn, prefix: QUEUE_PREFIX, concurrency: 2, autorun: true },
    );
    this.#worker.on('error', () => {
      // Connection errors during teardown are expected.
    });
  }

  async #process(job: Job<PrewarmJobData>, opts: SimAgentOptions): Promise<PrewarmJobResult> {
    const started = Date.now();
    const data = job.data;
    if (job.name !== PREWARM_JOB_NAME || data.v > JOB_SCHEMA_VERSION) {
      throw new UnrecoverableError(
        formatFailure(ErrorCodes.INVALID_CONFIG, `unsupported job ${job.name} v${data.v}`),
      );
    }
    if (data.node !== opts.node) {
      throw new UnrecoverableError(
        formatFailure(ErrorCodes.INVALID_CONFIG, `job for ${data.node} on ${opts.node}`),
      );
    }
    const injected = opts.failWith?.(data);
    if (injected) throw new UnrecoverableError(formatFailure(injected, `injected failure on ${opts.node}`));
    const progress = async (p: PrewarmJobProgress): Promise<void> => {
      await job.updateProgress(p as unknown as Record<string, unknown>);
    };
    try {
      const ref = parseReference(`${data.repository}@${data.digest}`);
      await progress({ phase: 'resolving', bytesDone: 0, bytesTotal: 0, layersDone: 0, layersTotal: 0 });
      const resolved = await this.#client.resolveImage(ref, parsePlatform(data.platform));
      const blobs = manifestBlobs(resolved.image.manifest);
      const total = blobs.reduce((n, b) => n + b.size, 0);
      const dir = join(opts.storeDir, 'blobs', 'sha256');
      await mkdir(dir, { recursive: true });
      let done = 0;
      let fromRegistry = 0;
      let present = 0;
      for (const [i, b] of blobs.entries()) {
        if (opts.blobDelayMs) await new Promise((r) => setTimeout(r, opts.blobDelayMs));
        const path = join(dir, digestHex(b.digest));
        const have = await stat(path).then(
          (s) => s.size === b.size,
          () => false,
        );
        if (have) {
          present += b.size;
        } else {
          const res = await this.#client.blob({
            registry: ref.registry,
            repository: ref.repository,
            digest: b.digest,
          });
          const hash = createHash('sha256');
          const parts: Buffer[] = [];
          for await (const chunk of res.body) {
            hash.update(chunk as Buffer);
            parts.push(chunk as Buffer);
          }
          const got = `sha256:${hash.digest('hex')}`;
          if (got !== b.digest)
            throw new UnrecoverableError(
              formatFailure(ErrorCodes.DIGEST_MISMATCH, `${b.digest}: got ${got}`),
            );
          await writeFile(`${path}.tmp`, Buffer.concat(parts));
          await rename(`${path}.tmp`, path);
          fromRegistry += b.size;
        }
        done += b.size;
        await progress({
          phase: 'fetching',
          bytesDone: done,
          bytesTotal: total,
          layersDone: i + 1,
          layersTotal: blobs.length,
        });
      }
      await progress({
        phase: 'warm',
        bytesDone: done,
        bytesTotal: total,
        layersDone: blobs.length,
        layersTotal: blobs.length,
      });
      return {
        phase: 'warm',
        manifestDigest: resolved.image.digest,
        bytesTotal: total,
        bytesFromRegistry: fromRegistry,
        bytesFromPeers: 0,
        bytesAlreadyPresent: present,
        durationMs: Date.now() - started,
      };
    } catch (err) {
      if (err instanceof UnrecoverableError) throw err;
      if (isPrewarmError(err) && !err.retryable)
        throw new UnrecoverableError(formatFailure(err.code, err.message));
      throw new Error(
        formatFailure(isPrewarmError(err) ? err.code : 'PW_ERR_UNKNOWN', (err as Error).message),
      );
    }
  }

  async close(): Promise<void> {
    // force: do not wait for a job a test is holding; teardown must never hang.
    await this.#worker.close(true);
    this.#conn.disconnect();
    await this.#client.close();
  }
}
