import { stat } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { Agent, type Dispatcher } from 'undici';
import { type CredentialProvider, loadDockerConfigFile, StaticCredentials } from '../../../oci/src/auth.js';
import { RegistryClient } from '../../../oci/src/client.js';
import { classifyHost, parseHost } from '../../../oci/src/egress-policy.js';
import { nodeQueueName, QUEUE_PREFIX } from '../../../oci/src/job-contract.js';
import { BlobFetcher } from '../fetch/blob-fetcher.js';
import { ImageWarmer } from '../fetch/image-warmer.js';
import { RedisPeerDirectory } from '../fetch/peer-directory.js';
import type { BlobTarget } from '../fetch/sources.js';
import { Mirror } from '../mirror/mirror.js';
import { PeerServer, readPeerTokens } from '../mirror/peer-server.js';
import { ContainerdImageEvents } from '../runtime/containerd-events.js';
import { CriImageService } from '../runtime/cri-image-service.js';
import { MirrorRoute } from '../runtime/mirror-route.js';
import type { RuntimeImageService } from '../runtime/runtime-port.js';
import { FsBlobStore } from '../store/fs-store.js';
import { GarbageCollector, type GcReport } from '../store/gc.js';
import { LeaseSet } from '../store/leases.js';
import { RedisPinSource } from '../store/redis-pins.js';
import { scanStore } from '../store/store-scan.js';
import { blobMetering } from './blob-metering.js';
import { type AgentConfig, defaultPlatform, egressPolicy, redactConfig } from './config.js';
import { GatedFetcher } from './gated-fetcher.js';
import { HealthServer } from './health-server.js';
import { type JobWarmer, PrewarmProcessor } from './job-processor.js';
import { AgentMetrics } from './metrics.js';
import { PrewarmWorker } from './prewarm-worker.js';
import {
  ChainedCredentials,
  KubeSecretReader,
  type PullSecretJob,
  PullSecretResolver,
  type SecretReader,
} from './pull-secrets.js';
import { redisOptionsFromUrl } from './redis-options.js';
import { WarmKeeper } from './warm-keeper.js';

export interface AgentDaemonDeps {
  logger: Logger;
  /**
   * The container runtime; default: a CRI client on `config.containerdSocket` (none when
   * that is empty). Tests pass their own containerd's.
   */
  runtime?: RuntimeImageService | null;
  /**
   * Where jobs' pull Secrets are read when `config.readPullSecrets` is on; default: the
   * Kubernetes API (`config.kubeconfigPath`, else in-cluster).
   */
  secretReader?: SecretReader;
}

/**
 * The node agent: composes the store (scanned at start), the fetcher, the BullMQ worker
 * on this node's queue, garbage collection, the warm re-check, the node-local mirror and
 * the health/metrics endpoint. `start(signal)` brings everything up (aborting `signal`
 * shuts down); `close()` stops taking jobs, hands running ones back with their partial
 * downloads kept, and closes everything within `config.shutdownTimeoutMs`.
 */
export class AgentDaemon {
  readonly config: AgentConfig;
  readonly metrics: AgentMetrics;
  readonly leases = new LeaseSet();
  readonly #log: Logger;
  readonly #deps: AgentDaemonDeps;
  readonly #stop = new AbortController();
  #store: FsBlobStore | undefined;
  #gc: GarbageCollector | undefined;
  #client: RegistryClient | undefined;
  #mirrorClient: RegistryClient | undefined;
  #dispatcher: Dispatcher | undefined;
  #fetcher: GatedFetcher | undefined;
  #redis: Redis | undefined;
  #queue: Queue | undefined;
  #worker: PrewarmWorker | undefined;
  #keeper: WarmKeeper | undefined;
  #mirror: Mirror | undefined;
  #peerServer: PeerServer | undefined;
  #runtime: RuntimeImageService | undefined;
  #events: ContainerdImageEvents | undefined;
  #health: HealthServer | undefined;
  #gcTimer: NodeJS.Timeout | undefined;
  #gcRunning: Promise<unknown> | undefined;
  #ready = false;
  #closing: Promise<void> | undefined;

  constructor(config: AgentConfig, deps: AgentDaemonDeps) {
    this.config = config;
    this.#deps = deps;
    this.#log = deps.logger.child({ node: config.nodeName });
    this.metrics = new AgentMetrics(async () => {
      const u = await this.#gc!.usage();
      return {
        usedBytes: u.usedBytes,
        blobs: u.blobs,
        ingestBytes: u.ingestBytes,
        budgetBytes: u.budgetBytes,
      };
    });
  }

  /** The /metrics, /healthz, /readyz listener's address, once started. */
  get httpAddress(): AddressInfo | undefined {
    return this.#health?.address;
  }

  /** The mirror's `host:port`, once started (undefined when disabled). */
  get mirrorAddress(): string | undefined {
    return this.#mirror?.address;
  }

  /** The peer listener's `host:port`, once started (undefined without peers). */
  get peerAddress(): string | undefined {
    return this.#peerServer?.address;
  }

  get store(): FsBlobStore | undefined {
    return this.#store;
  }

  get gc(): GarbageCollector | undefined {
    return this.#gc;
  }

  get keeper(): WarmKeeper | undefined {
    return this.#keeper;
  }

  /**
   * Starts every component; resolves once the agent takes jobs. The health endpoint
   * comes up first (readiness false until the end). Throws on invalid credentials files,
   * an unusable store directory or a port in use; Redis being down is not an error
   * (readiness stays false until it answers).
   */
  async start(signal?: AbortSignal): Promise<void> {
    const c = this.config;
    const log = this.#log;
    signal?.addEventListener('abort', () => void this.close(), { once: true });
    log.info({ config: redactConfig(c) }, 'agent starting');

    this.#health = new HealthServer({
      host: c.httpHost,
      port: c.httpPort,
      registry: this.metrics.registry,
      liveness: {
        store: async () =>
          (await stat(c.storePath).catch(() => undefined)) ? undefined : 'store directory missing',
      },
      readiness: {
        started: () => (this.#ready ? undefined : 'starting or stopping'),
        redis: async () => {
          if (this.#redis?.status !== 'ready') return `redis ${this.#redis?.status ?? 'not connected'}`;
          await this.#redis.ping();
          return undefined;
        },
        worker: () => (this.#worker?.running ? undefined : 'worker not running'),
      },
    });
    const addr = await this.#health.start();
    log.info({ address: `${addr.address}:${addr.port}` }, 'health and metrics listening');

    const store = await new FsBlobStore(c.storePath, {
      fsync: c.storeFsync,
      directIo: c.storeDirectIo,
    }).init();
    this.#store = store;
    const scan = await scanStore(store, c.storeVerify);
    log.info(
      {
        blobs: scan.blobs,
        images: scan.images,
        removedTmp: scan.removedTmp,
        removedBlobs: scan.removedBlobs.length,
        removedImages: scan.removedImages.map((r) => `${r.repository}@${r.digest}`),
        removedIngests: scan.removedIngests,
        keptIngests: scan.keptIngests,
      },
      'store scanned',
    );

    const credentials: CredentialProvider = c.dockerConfigPath
      ? await loadDockerConfigFile(c.dockerConfigPath)
      : new StaticCredentials();
    // Read before anything listens: peers on without a usable token is a configuration error.
    const peerTokens = c.peerUrl ? await readPeerTokens(c.peerTokenFile) : undefined;
    // Every registry request of this node (jobs and mirror) obeys one egress policy, checked
    // by name before a request and by address when connecting.
    const egress = egressPolicy(c);
    this.#dispatcher = new Agent({
      keepAliveTimeout: 30_000,
      connections: null,
      pipelining: 1,
      connect: egress.connector({ timeout: 10_000 }),
    }).compose(blobMetering(this.metrics));
    this.#client = new RegistryClient({ credentials, egress, dispatcher: this.#dispatcher });
    // The mirror forwards each client's own authorization; it gets no credentials at all, so
    // no path of it can pull with the node's.
    this.#mirrorClient = new RegistryClient({
      egress,
      dispatcher: this.#dispatcher,
      // Few retries: a mirror that waits on a sick upstream holds up the pull it should speed up.
      retry: { attempts: 2, maxDelayMs: 500 },
    });
    const fetcher = new GatedFetcher(
      new BlobFetcher(store, {
        chunkSize: c.chunkSize,
        concurrencyPerBlob: c.chunkConcurrency,
        initialConcurrency: c.chunkInitialConcurrency,
        maxConnections: c.maxConnections,
        bandwidthBytesPerSec: c.bandwidthBytesPerSec,
      }),
    );
    this.#fetcher = fetcher;
    const warmer = new ImageWarmer(this.#client, fetcher, store);
    const dispatcher = this.#dispatcher;
    let warmerFor: ((pullSecrets: readonly string[], job: PullSecretJob) => Promise<JobWarmer>) | undefined;
    if (c.readPullSecrets) {
      const resolver = new PullSecretResolver(
        this.#deps.secretReader ??
          new KubeSecretReader(c.kubeconfigPath ? { kubeconfigPath: c.kubeconfigPath } : {}),
        { credentialsNamespace: c.pullCredentialsNamespace },
      );
      // A client per job so one job's secrets never serve another's pulls; it shares the
      // node's connection pool (and metering) and closes without closing the pool.
      warmerFor = async (pullSecrets, job) => {
        const jobCredentials = await resolver.credentials(pullSecrets, job);
        const jobClient = new RegistryClient({
          credentials: new ChainedCredentials([jobCredentials, credentials]),
          egress,
          dispatcher,
        });
        return { warmer: new ImageWarmer(jobClient, fetcher, store), close: () => jobClient.close() };
      };
    }

    // The agent's own ACL user; TLS files read once here (docs/security.md, Redis).
    const redisOptions = redisOptionsFromUrl(c.redisUrl, {
      caFile: c.redisTlsCaFile,
      certFile: c.redisTlsCertFile,
      keyFile: c.redisTlsKeyFile,
    });
    const redis = new Redis(redisOptions);
    redis.on('error', (err) => log.debug({ err: err.message }, 'redis connection error'));
    this.#redis = redis;
    this.#queue = new Queue(nodeQueueName(c.nodeName), {
      connection: redis,
      prefix: QUEUE_PREFIX,
      skipVersionCheck: true,
    });
    this.#queue.on('error', (err) => log.debug({ err: err.message }, 'queue error'));

    this.#gc = new GarbageCollector(store, this.leases, new RedisPinSource(redis, c.nodeName), {
      budget: { maxBytes: c.diskBudgetBytes, maxPercent: c.diskBudgetPercent },
      staleIngestMs: c.staleIngestMs,
      inflight: (d) => fetcher.inflight(d) !== undefined,
      onReport: (r) => this.#onGcReport(r),
    });

    if (this.#deps.runtime !== undefined) this.#runtime = this.#deps.runtime ?? undefined;
    else if (c.containerdSocket !== '') this.#runtime = new CriImageService({ address: c.containerdSocket });

    // Shared by prewarm jobs and the mirror: both try the peers holding a blob first.
    const peerDirectory =
      c.peerUrl && peerTokens
        ? new RedisPeerDirectory(redis, {
            selfUrl: c.peerUrl,
            peerOptions: { token: peerTokens[0] as string },
          })
        : undefined;
    const processor = new PrewarmProcessor(
      { node: c.nodeName, defaultPlatform: defaultPlatform(c), blobConcurrency: c.blobConcurrency },
      {
        warmer,
        store,
        gc: this.#gc,
        leases: this.leases,
        metrics: this.metrics,
        logger: log,
        runtime: this.#runtime,
        gate: (signal, ready) => fetcher.gate(signal, ready),
        peerDirectory,
        egress,
        ...(warmerFor ? { warmerFor } : {}),
        ...(c.hostsTomlDir
          ? {
              mirrorRoute: new MirrorRoute({
                configPath: c.hostsTomlDir,
                registries: c.hostsTomlRegistries,
                timeoutMs: c.mirrorRouteWaitMs,
              }),
            }
          : {}),
      },
    );

    if (c.mirrorPort > 0) {
      const h = parseHost(c.mirrorHost.includes(':') ? `[${c.mirrorHost}]` : c.mirrorHost);
      if (!h || classifyHost(h.hostname) !== 'loopback')
        log.warn(
          { mirrorHost: c.mirrorHost },
          'the mirror listens beyond loopback: whoever reaches it can read the images warmed on this node',
        );
      this.#mirror = new Mirror(
        { store, fetcher, client: this.#mirrorClient },
        {
          listen: `${c.mirrorHost}:${c.mirrorPort}`,
          logger: log.child({ component: 'mirror' }),
          // A containerd pull that misses here asks the peers holding the blob first, too.
          ...(peerDirectory ? { peers: (t: BlobTarget) => peerDirectory.holders(t.digest) } : {}),
        },
      );
      const mirror = this.#mirror;
      await mirror.start();
      this.metrics.attachMirror(() => mirror.stats);
    }
    if (peerTokens) {
      this.#peerServer = new PeerServer(
        { store, fetcher },
        {
          listen: `${c.peerHost.includes(':') ? `[${c.peerHost}]` : c.peerHost}:${c.peerPort}`,
          tokens: peerTokens,
          logger: log.child({ component: 'peers' }),
        },
      );
      await this.#peerServer.start();
    }

    // A first collection before taking jobs: the budget may have shrunk while we were down.
    await this.#collect('startup');
    this.#scheduleGc();

    this.#worker = new PrewarmWorker({ ...redisOptions }, processor, this.metrics, log, {
      node: c.nodeName,
      concurrency: c.concurrency,
      lockDurationMs: c.lockDurationMs,
      stalledIntervalMs: c.stalledIntervalMs,
      maxStalledCount: c.maxStalledCount,
    });
    this.#worker.start();

    this.#keeper = new WarmKeeper(
      { node: c.nodeName, intervalMs: c.recheckIntervalMs },
      {
        redis,
        queue: this.#queue,
        store,
        processor,
        leases: this.leases,
        runtime: this.#runtime,
        metrics: this.metrics,
        logger: log.child({ component: 'recheck' }),
      },
    );
    this.#keeper.start(this.#stop.signal);
    if (this.#runtime && c.containerdSocket !== '') {
      const keeper = this.#keeper;
      this.#events = new ContainerdImageEvents({
        address: c.containerdSocket,
        logger: log,
        onDelete: (image) => {
          log.info({ image }, 'runtime deleted an image; re-checking');
          keeper.request();
        },
      });
      this.#events.start();
    }
    this.#ready = true;
    log.info({ queue: nodeQueueName(c.nodeName) }, 'agent ready');
  }

  /** Runs one garbage collection pass now (also used by tests and the periodic timer). */
  collect(reason = 'manual'): Promise<GcReport | undefined> {
    return this.#collect(reason);
  }

  async #collect(reason: string): Promise<GcReport | undefined> {
    try {
      return await this.#gc?.collect({ reason });
    } catch (err) {
      this.metrics.gcRuns.inc({ reason, result: 'error' });
      this.#log.warn({ err, reason }, 'garbage collection failed');
      return undefined;
    }
  }

  /** Metrics and a log line for every collection pass (periodic, startup, or made by a job). */
  #onGcReport(report: GcReport): void {
    const result = !report.pinsKnown ? 'pins_unknown' : report.satisfied ? 'ok' : 'short';
    this.metrics.gcRuns.inc({ reason: report.reason, result });
    if (report.evictedImages.length > 0)
      this.metrics.gcEvictions.inc({ kind: 'image' }, report.evictedImages.length);
    if (report.evictedBlobs > 0) this.metrics.gcEvictions.inc({ kind: 'blob' }, report.evictedBlobs);
    if (report.freedBytes > 0) this.metrics.gcFreedBytes.inc(report.freedBytes);
    const level =
      report.evictedBlobs > 0 || report.removedIngests > 0 || !report.pinsKnown || !report.satisfied
        ? 'info'
        : 'debug';
    this.#log[level](
      {
        reason: report.reason,
        pinsKnown: report.pinsKnown,
        satisfied: report.satisfied,
        usageBefore: report.usageBefore,
        usageAfter: report.usageAfter,
        budgetBytes: report.budgetBytes,
        needBytes: report.needBytes,
        protectedBytes: report.protectedBytes,
        evictedImages: report.evictedImages.map((e) => `${e.repository}@${e.digest}`),
        evictedBlobs: report.evictedBlobs,
        freedBytes: report.freedBytes,
        removedIngests: report.removedIngests,
      },
      'garbage collection',
    );
  }

  #scheduleGc(): void {
    if (this.#stop.signal.aborted) return;
    this.#gcTimer = setTimeout(() => {
      this.#gcRunning = this.#collect('periodic').finally(() => {
        this.#gcRunning = undefined;
        this.#scheduleGc();
      });
    }, this.config.gcIntervalMs);
  }

  /**
   * Graceful shutdown, bounded by `config.shutdownTimeoutMs`: readiness goes false, the
   * worker stops taking jobs and hands running ones back to the queue, downloads stop
   * with their partial data recorded, then connections and listeners close. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const log = this.#log;
      const started = performance.now();
      this.#ready = false;
      this.#stop.abort();
      clearTimeout(this.#gcTimer);
      log.info('agent stopping');
      const budget = this.config.shutdownTimeoutMs;
      await this.#worker?.close(Math.max(100, budget - 1_000));
      this.#events?.close();
      await this.#keeper?.close();
      await this.#fetcher?.close();
      await this.#gcRunning;
      await this.#mirror?.close();
      await this.#peerServer?.close();
      await this.#queue?.close().catch(() => undefined);
      this.#redis?.disconnect();
      this.#runtime?.close();
      await this.#client?.close();
      await this.#mirrorClient?.close();
      await this.#dispatcher?.close();
      await this.#health?.close();
      log.info({ durationMs: Math.round(performance.now() - started) }, 'agent stopped');
    })();
    return this.#closing;
  }
}
