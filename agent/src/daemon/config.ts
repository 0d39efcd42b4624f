/**
 * The agent daemon's configuration: every setting is declared once here with its
 * environment variable, default and description (docs/agent.md lists them from this
 * table). `loadConfig` validates everything at start and reports all problems at once;
 * only daemon/main.ts passes it `process.env`.
 */
import { EgressPolicy, PUBLIC_REGISTRIES } from '../../../oci/src/egress-policy.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import { formatPlatform, hostPlatform, parsePlatform } from '../../../oci/src/platform.js';
import { isValidRegistryHost } from '../../../oci/src/reference.js';
import type { ScanVerify } from '../store/store-scan.js';
import { parseDuration, parseSize } from '../util/format.js';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

interface Setting<T> {
  env: string;
  /** Raw default (as it would be written in the environment); undefined = required. */
  default: string | undefined;
  description: string;
  parse: (raw: string) => T;
  /** Never logged or echoed in errors. */
  secret?: boolean;
}

function setting<T>(s: Setting<T>): Setting<T> {
  return s;
}

const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

function nodeName(raw: string): string {
  if (raw.length > 253 || !DNS_SUBDOMAIN.test(raw)) throw new Error('must be a DNS subdomain (a node name)');
  return raw;
}

function nonEmpty(raw: string): string {
  if (raw.trim() === '') throw new Error('must not be empty');
  return raw;
}

function int(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (raw: string): number => {
    const n = Number(raw);
    if (!Number.isSafeInteger(n) || n < min || n > max)
      throw new Error(`must be an integer in [${min}, ${max === Number.MAX_SAFE_INTEGER ? '∞' : max}]`);
    return n;
  };
}

function size(raw: string): number {
  return parseSize(raw);
}

function percent(raw: string): number {
  const n = Number(raw.replace(/%$/, ''));
  if (!Number.isFinite(n) || n < 0 || n > 100) throw new Error('must be a percentage in [0, 100]');
  return n;
}

function bool(raw: string): boolean {
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new Error('must be true or false');
}

function duration(min: number) {
  return (raw: string): number => {
    const ms = parseDuration(raw);
    if (ms < min) throw new Error(`must be at least ${min} ms`);
    return ms;
  };
}

function port(raw: string): number {
  return int(0, 65535)(raw);
}

function oneOf<T extends string>(values: readonly T[]) {
  return (raw: string): T => {
    if (!(values as readonly string[]).includes(raw)) throw new Error(`must be one of ${values.join(', ')}`);
    return raw as T;
  };
}

function redisUrl(raw: string): string {
  const u = new URL(raw);
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:')
    throw new Error('must be a redis:// or rediss:// URL');
  return raw;
}

function hostList(raw: string): string[] {
  const hosts = raw
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean);
  for (const h of hosts)
    if (!isValidRegistryHost(h)) throw new Error(`${JSON.stringify(h)} is not a registry host`);
  return hosts;
}

/** Registry host namespaces of containerd's config_path: hosts and `_default`. */
function namespaceList(raw: string): string[] {
  const list = raw
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean);
  for (const h of list)
    if (h !== '_default' && !isValidRegistryHost(h))
      throw new Error(`${JSON.stringify(h)} is neither a registry host nor _default`);
  return list;
}

/** The egress allow-list: hosts and `_default`, validated by the policy itself. */
function registryList(raw: string): string[] {
  const list = raw
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean);
  if (list.length === 0) throw new Error(`must name at least one registry (or ${PUBLIC_REGISTRIES})`);
  new EgressPolicy({ allowedRegistries: list });
  return list;
}

function platform(raw: string): string {
  if (raw !== '') parsePlatform(raw);
  return raw;
}

/** Every setting of the agent daemon. */
export const AGENT_SETTINGS = {
  nodeName: setting({
    env: 'KUBE_PREWARM_NODE_NAME',
    default: undefined,
    description: "This node's name (downward API `spec.nodeName`); selects the job queue `node.<name>`.",
    parse: nodeName,
  }),
  storePath: setting({
    env: 'KUBE_PREWARM_STORE',
    default: '/var/lib/kube-prewarm/store',
    description: 'Directory of the content-addressed store (a hostPath).',
    parse: nonEmpty,
  }),
  storeFsync: setting({
    env: 'KUBE_PREWARM_STORE_FSYNC',
    default: 'true',
    description: 'fsync blobs and journals; turn off only on throwaway stores.',
    parse: bool,
  }),
  storeDirectIo: setting({
    env: 'KUBE_PREWARM_STORE_DIRECT_IO',
    default: 'true',
    description:
      "Write downloads with O_DIRECT (no page-cache copy, no eviction of the node's working set) where the filesystem accepts it; false: always buffered.",
    parse: bool,
  }),
  storeVerify: setting({
    env: 'KUBE_PREWARM_STORE_VERIFY',
    default: 'size',
    description: 'Startup scan depth: `none`, `size` (blob sizes against manifests) or `full` (re-hash all).',
    parse: oneOf<ScanVerify>(['none', 'size', 'full']),
  }),
  redisUrl: setting({
    env: 'KUBE_PREWARM_REDIS_URL',
    default: 'redis://127.0.0.1:6379',
    description: 'Redis for the BullMQ queues (`redis://` or `rediss://`; a password may be in the URL).',
    parse: redisUrl,
    secret: true,
  }),
  redisTlsCaFile: setting({
    env: 'KUBE_PREWARM_REDIS_TLS_CA_FILE',
    default: '',
    description: "PEM CA bundle a `rediss://` server's certificate must chain to. Empty: Node's bundled CAs.",
    parse: (raw: string) => raw,
  }),
  redisTlsCertFile: setting({
    env: 'KUBE_PREWARM_REDIS_TLS_CERT_FILE',
    default: '',
    description:
      'PEM client certificate for a `rediss://` server that asks for one (with KUBE_PREWARM_REDIS_TLS_KEY_FILE).',
    parse: (raw: string) => raw,
  }),
  redisTlsKeyFile: setting({
    env: 'KUBE_PREWARM_REDIS_TLS_KEY_FILE',
    default: '',
    description: 'PEM private key of KUBE_PREWARM_REDIS_TLS_CERT_FILE.',
    parse: (raw: string) => raw,
  }),
  concurrency: setting({
    env: 'KUBE_PREWARM_CONCURRENCY',
    default: '2',
    description: 'Images warmed in parallel (BullMQ worker concurrency).',
    parse: int(1, 64),
  }),
  blobConcurrency: setting({
    env: 'KUBE_PREWARM_BLOB_CONCURRENCY',
    default: '3',
    description: 'Blobs of one image downloaded at once.',
    parse: int(1, 64),
  }),
  chunkConcurrency: setting({
    env: 'KUBE_PREWARM_CHUNK_CONCURRENCY',
    default: '16',
    description: 'Parallel ranged requests per blob, at most.',
    parse: int(1, 256),
  }),
  chunkInitialConcurrency: setting({
    env: 'KUBE_PREWARM_CHUNK_INITIAL_CONCURRENCY',
    default: '4',
    description:
      'Ranged requests a blob starts with; doubled each second while throughput still grows by a fifth (up to KUBE_PREWARM_CHUNK_CONCURRENCY), halved down to 2 when a doubling bought nothing and fewer hold the rate.',
    parse: int(1, 256),
  }),
  maxConnections: setting({
    env: 'KUBE_PREWARM_MAX_CONNECTIONS',
    default: '32',
    description: 'Parallel ranged requests across all images of the node.',
    parse: int(1, 1024),
  }),
  chunkSize: setting({
    env: 'KUBE_PREWARM_CHUNK_SIZE',
    default: '16MiB',
    description: 'Largest ranged request.',
    parse: size,
  }),
  bandwidthBytesPerSec: setting({
    env: 'KUBE_PREWARM_BANDWIDTH',
    default: '0',
    description: 'Node-wide download cap in bytes/s (e.g. `50MiB`); 0 = unlimited.',
    parse: size,
  }),
  diskBudgetBytes: setting({
    env: 'KUBE_PREWARM_DISK_BUDGET',
    default: '0',
    description: 'Most bytes the store may use (e.g. `20GiB`); 0 = no byte cap.',
    parse: size,
  }),
  diskBudgetPercent: setting({
    env: 'KUBE_PREWARM_DISK_BUDGET_PERCENT',
    default: '80',
    description:
      "Most of the store filesystem's size the store may use, in percent; 0 = no cap. The smaller cap wins.",
    parse: percent,
  }),
  gcIntervalMs: setting({
    env: 'KUBE_PREWARM_GC_INTERVAL',
    default: '5m',
    description: 'Period of the garbage collection pass.',
    parse: duration(1000),
  }),
  staleIngestMs: setting({
    env: 'KUBE_PREWARM_STALE_INGEST',
    default: '24h',
    description: 'Partial downloads not written for this long (and not in flight) are deleted.',
    parse: duration(1000),
  }),
  recheckIntervalMs: setting({
    env: 'KUBE_PREWARM_RECHECK_INTERVAL',
    default: '5m',
    description: 'Period of the "warm stays warm" re-check of completed jobs against the store and runtime.',
    parse: duration(1000),
  }),
  lockDurationMs: setting({
    env: 'KUBE_PREWARM_JOB_LOCK',
    default: '30s',
    description: "BullMQ job lock; a crashed agent's job is taken again after at most about twice this.",
    parse: duration(1000),
  }),
  stalledIntervalMs: setting({
    env: 'KUBE_PREWARM_STALLED_INTERVAL',
    default: '30s',
    description: 'How often the worker looks for jobs whose agent died (BullMQ stalled check).',
    parse: duration(1000),
  }),
  maxStalledCount: setting({
    env: 'KUBE_PREWARM_MAX_STALLED',
    default: '3',
    description: 'Times a job may be recovered from a dead agent before it fails.',
    parse: int(0, 100),
  }),
  shutdownTimeoutMs: setting({
    env: 'KUBE_PREWARM_SHUTDOWN_TIMEOUT',
    default: '20s',
    description: 'On SIGTERM: time to hand running jobs back and persist partial downloads before exiting.',
    parse: duration(100),
  }),
  httpHost: setting({
    env: 'KUBE_PREWARM_HTTP_HOST',
    default: '0.0.0.0',
    description: 'Address of the /metrics, /healthz and /readyz listener.',
    parse: nonEmpty,
  }),
  httpPort: setting({
    env: 'KUBE_PREWARM_HTTP_PORT',
    default: '9464',
    description: 'Port of the /metrics, /healthz and /readyz listener (0 = any free port, logged).',
    parse: port,
  }),
  mirrorHost: setting({
    env: 'KUBE_PREWARM_MIRROR_HOST',
    default: '127.0.0.1',
    description:
      'Address of the node-local mirror containerd pulls through (hosts.toml; containerd is on the same host). Keep it on loopback: the mirror serves warmed images to whoever reaches it. Peers use their own listener (KUBE_PREWARM_PEER_PORT).',
    parse: nonEmpty,
  }),
  mirrorPort: setting({
    env: 'KUBE_PREWARM_MIRROR_PORT',
    default: '5050',
    description: 'Port of the node-local OCI mirror containerd pulls through (0 = disabled).',
    parse: port,
  }),
  peerUrl: setting({
    env: 'KUBE_PREWARM_PEER_URL',
    default: '',
    description:
      "This node's peer listener URL as other agents reach it (`http://$(NODE_IP):5051`). Set: the peer listener runs (needs KUBE_PREWARM_PEER_TOKEN_FILE), blobs are announced in Redis and fetched from peers holding them before the registry. Empty = no peer sharing, no peer listener.",
    parse: (raw: string) => {
      if (raw === '') return raw;
      const u = new URL(raw);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('must be an http(s) URL');
      return u.origin;
    },
  }),
  peerHost: setting({
    env: 'KUBE_PREWARM_PEER_HOST',
    default: '0.0.0.0',
    description:
      'Address of the peer listener (only with KUBE_PREWARM_PEER_URL): other agents fetch blobs this node holds from it, with the peer token.',
    parse: nonEmpty,
  }),
  peerPort: setting({
    env: 'KUBE_PREWARM_PEER_PORT',
    default: '5051',
    description:
      'Port of the peer listener (only with KUBE_PREWARM_PEER_URL; 0 = any free port, logged). It serves blobs by digest to requests carrying the peer token, nothing else.',
    parse: port,
  }),
  peerTokenFile: setting({
    env: 'KUBE_PREWARM_PEER_TOKEN_FILE',
    default: '',
    description:
      'File with the cluster peer token (mount it from a Secret), required with KUBE_PREWARM_PEER_URL: sent to peers and required from them. One token a line, each at least 32 characters; the first is sent, all are accepted (rotation).',
    parse: (raw: string) => raw,
  }),
  allowedRegistries: setting({
    env: 'KUBE_PREWARM_ALLOWED_REGISTRIES',
    default: PUBLIC_REGISTRIES,
    description:
      'Comma-separated registries the agent may contact, for prewarm jobs and mirror misses alike: hosts (`host`, `host:port`; without a port every port) and `_default` = any public registry. Loopback, private, link-local and metadata addresses (also behind a DNS name) are reached only when listed explicitly. Set it to the registries hosts.toml is written for.',
    parse: registryList,
  }),
  containerdSocket: setting({
    env: 'KUBE_PREWARM_CONTAINERD_SOCKET',
    default: '/run/containerd/containerd.sock',
    description: 'containerd socket for CRI PullImage/ImageStatus (`unpack` mode, re-checks); empty = none.',
    parse: (raw: string) => raw,
  }),
  hostsTomlDir: setting({
    env: 'KUBE_PREWARM_HOSTS_TOML_DIR',
    default: '',
    description:
      "containerd's registry config_path as mounted in the agent (read-only; chart: with agent.mirror.hostsToml). Before an unpack the agent waits until the job's registry's hosts.toml there is kube-prewarm's, so containerd pulls from the node mirror (the store) and not from the registry a second time. Empty: no wait.",
    parse: (raw: string) => raw,
  }),
  hostsTomlRegistries: setting({
    env: 'KUBE_PREWARM_HOSTS_TOML_REGISTRIES',
    default: '',
    description:
      "Comma-separated registries hosts.toml is written for (the hosts-toml container's --registries; `_default` = every other one). An unpack for a registry not covered does not wait.",
    parse: namespaceList,
  }),
  mirrorRouteWaitMs: setting({
    env: 'KUBE_PREWARM_MIRROR_ROUTE_WAIT',
    default: '2m',
    description:
      'Longest an unpack waits for containerd to be pointed at the mirror (KUBE_PREWARM_HOSTS_TOML_DIR); after it the unpack goes ahead with a warning (containerd then pulls from the registry).',
    parse: duration(0),
  }),
  dockerConfigPath: setting({
    env: 'KUBE_PREWARM_DOCKER_CONFIG',
    default: '',
    description: 'A dockerconfigjson file with node-wide registry credentials; empty = anonymous.',
    parse: (raw: string) => raw,
  }),
  readPullSecrets: setting({
    env: 'KUBE_PREWARM_READ_PULL_SECRETS',
    default: 'false',
    description:
      "Read the dockerconfigjson Secrets a job names (`pullSecrets`: the operator's copies in KUBE_PREWARM_PULL_CREDENTIALS_NAMESPACE, or Secrets of the job owners' namespaces) through the Kubernetes API and use them for that job; needs RBAC `get` on secrets there (chart: `agent.rbac.readPullSecrets`). Off: a job's `pullSecrets` are ignored (logged) and only the node-wide credentials are used.",
    parse: bool,
  }),
  pullCredentialsNamespace: setting({
    env: 'KUBE_PREWARM_PULL_CREDENTIALS_NAMESPACE',
    default: '',
    description:
      "Namespace of the operator's per-ImagePrewarm pull-credential copies (chart: agent.rbac.pullCredentials.namespace); a job's reference there is used only when the copy was made for one of the job's owners, for the job's registry, and has not expired. Empty: a job may name only Secrets of its owners' namespaces. Either way a reference to another namespace fails the job permanently before anything is read.",
    parse: (raw: string) => {
      if (raw !== '' && !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(raw))
        throw new Error('must be a namespace name');
      return raw;
    },
  }),
  kubeconfigPath: setting({
    env: 'KUBE_PREWARM_KUBECONFIG',
    default: '',
    description:
      'kubeconfig file for reading pull Secrets; empty = the in-cluster service account (or $KUBECONFIG / ~/.kube/config outside a cluster).',
    parse: (raw: string) => raw,
  }),
  plainHttpRegistries: setting({
    env: 'KUBE_PREWARM_PLAIN_HTTP',
    default: '',
    description:
      'Comma-separated registry hosts spoken to over plain HTTP; each must be allowed by KUBE_PREWARM_ALLOWED_REGISTRIES. Loopback registries listed explicitly there are spoken to over HTTP too.',
    parse: hostList,
  }),
  platform: setting({
    env: 'KUBE_PREWARM_PLATFORM',
    default: '',
    description: "Platform used when a job names none (`os/arch[/variant]`); empty = this host's.",
    parse: platform,
  }),
  logLevel: setting({
    env: 'KUBE_PREWARM_LOG_LEVEL',
    default: 'info',
    description: 'pino log level.',
    parse: oneOf<LogLevel>(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
  }),
};

type Settings = typeof AGENT_SETTINGS;

/** The validated configuration. */
export type AgentConfig = { readonly [K in keyof Settings]: ReturnType<Settings[K]['parse']> };

/**
 * Reads and validates every setting from `env`. Throws PW_ERR_INVALID_CONFIG listing
 * every invalid or missing variable (values of secret settings are never echoed).
 */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): AgentConfig {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [key, s] of Object.entries(AGENT_SETTINGS) as [keyof Settings, Setting<unknown>][]) {
    const raw = env[s.env] ?? s.default;
    if (raw === undefined) {
      problems.push(`${s.env} is required: ${s.description}`);
      continue;
    }
    try {
      out[key] = s.parse(raw);
    } catch (err) {
      const shown = s.secret ? '' : ` (${JSON.stringify(raw.slice(0, 200))})`;
      problems.push(`${s.env}${shown}: ${(err as Error).message}`);
    }
  }
  if (problems.length === 0) {
    if (out.diskBudgetBytes === 0 && out.diskBudgetPercent === 0)
      problems.push(
        'KUBE_PREWARM_DISK_BUDGET and KUBE_PREWARM_DISK_BUDGET_PERCENT are both 0: the store needs a budget',
      );
    if ((out.stalledIntervalMs as number) > 4 * (out.lockDurationMs as number))
      problems.push('KUBE_PREWARM_STALLED_INTERVAL should not exceed 4 × KUBE_PREWARM_JOB_LOCK');
    if (out.peerUrl !== '' && out.peerTokenFile === '')
      problems.push(
        'KUBE_PREWARM_PEER_URL is set but KUBE_PREWARM_PEER_TOKEN_FILE is not: peers must authenticate',
      );
    const policy = egressPolicy(out as AgentConfig);
    for (const h of out.plainHttpRegistries as string[])
      if (!policy.allowsRegistry(h))
        problems.push(`KUBE_PREWARM_PLAIN_HTTP: ${h} is not allowed by KUBE_PREWARM_ALLOWED_REGISTRIES`);
  }
  if (problems.length > 0) {
    throw new PrewarmError(
      ErrorCodes.INVALID_CONFIG,
      `invalid agent configuration:\n  ${problems.join('\n  ')}`,
      {
        detail: { problems },
      },
    );
  }
  return out as AgentConfig;
}

/** The configuration as safe to log: secret settings hidden. */
export function redactConfig(config: AgentConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(AGENT_SETTINGS) as [keyof Settings, Setting<unknown>][])
    out[key] = s.secret ? '[hidden]' : config[key];
  return out;
}

/** The egress policy of the agent (its jobs and its mirror), from the validated configuration. */
export function egressPolicy(
  config: Pick<AgentConfig, 'allowedRegistries' | 'plainHttpRegistries'>,
): EgressPolicy {
  return new EgressPolicy({
    allowedRegistries: config.allowedRegistries,
    plainHttp: config.plainHttpRegistries,
  });
}

/** The platform to use for a job that names none. */
export function defaultPlatform(config: AgentConfig): string {
  return config.platform !== '' ? config.platform : formatPlatform(hostPlatform());
}
