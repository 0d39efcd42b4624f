/**
 * The operator's configuration: every setting declared once with its environment
 * variable, default and description (the README's table is checked against this list by
 * a test). `loadConfig(env)` validates everything up front and throws
 * PW_ERR_INVALID_CONFIG naming each bad variable: a misconfigured operator must not
 * start half-working. Only main.ts passes `process.env` in.
 */
import { hostname } from 'node:os';
import { EgressPolicy, PUBLIC_REGISTRIES } from '../../oci/src/egress-policy.js';
import { ErrorCodes, PrewarmError } from '../../oci/src/errors.js';
import { parseQuantity } from './quantity.js';

/** Turns a raw environment value into a setting's value; throws with a readable reason. */
export type Parser<T> = (raw: string) => T;

/** One setting: its variable, default and description declared together. */
export interface Setting<T> {
  env: string;
  default: T;
  description: string;
  parse: Parser<T>;
}

export function int(min: number, max = Number.MAX_SAFE_INTEGER): Parser<number> {
  return (raw) => {
    if (!/^-?\d+$/.test(raw.trim())) throw new Error(`not an integer: ${JSON.stringify(raw)}`);
    const n = Number(raw);
    if (n < min || n > max) throw new Error(`must be between ${min} and ${max}`);
    return n;
  };
}

export const str: Parser<string> = (raw) => raw;

export function oneOf<T extends string>(...values: T[]): Parser<T> {
  return (raw) => {
    if (!(values as string[]).includes(raw)) throw new Error(`must be one of ${values.join(', ')}`);
    return raw as T;
  };
}

/** `host=n,host2=m` → record. */
const hostLimits: Parser<Record<string, number>> = (raw) => {
  const out: Record<string, number> = {};
  for (const part of raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const m = /^([A-Za-z0-9.-]+(?::\d{1,5})?)=(\d+)$/.exec(part);
    if (!m) throw new Error(`expected host=limit[,host=limit], got ${JSON.stringify(part)}`);
    out[m[1]!] = Number(m[2]);
  }
  return out;
};

/** Comma-separated list, trimmed, empty items dropped. */
const list: Parser<string[]> = (raw) =>
  raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

/** A byte size: `50Gi`, `500M`, `1073741824`. */
const bytes: Parser<number> = (raw) => {
  const n = parseQuantity(raw.trim());
  if (n === undefined) throw new Error(`not a size (examples: 50Gi, 500Mi, 1T): ${JSON.stringify(raw)}`);
  return n;
};

const NAMESPACE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** `*` or comma-separated namespace names. */
const namespaceList: Parser<string[]> = (raw) => {
  const names = list(raw);
  for (const n of names)
    if (n !== '*' && !NAMESPACE.test(n)) throw new Error(`not a namespace name: ${JSON.stringify(n)}`);
  return names;
};

/** `ns=size[,ns=size]` → bytes by namespace. */
const namespaceSizes: Parser<Record<string, number>> = (raw) => {
  const out: Record<string, number> = {};
  for (const part of list(raw)) {
    const m = /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)=(.+)$/.exec(part);
    if (!m) throw new Error(`expected namespace=size[,namespace=size], got ${JSON.stringify(part)}`);
    out[m[1]!] = bytes(m[3]!);
  }
  return out;
};

/** Registry allow-list: hosts and `_default`, validated by the egress policy itself. */
const registryList: Parser<string[]> = (raw) => {
  const hosts = list(raw);
  if (hosts.length === 0) throw new Error(`must name at least one registry (or ${PUBLIC_REGISTRIES})`);
  new EgressPolicy({ allowedRegistries: hosts });
  return hosts;
};

export const redisUrl: Parser<string> = (raw) => {
  const u = new URL(raw);
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:')
    throw new Error('must be a redis:// or rediss:// URL');
  return raw;
};

/** Every setting, in README order. */
export const SETTINGS = {
  redisUrl: {
    env: 'KUBE_PREWARM_REDIS_URL',
    default: 'redis://127.0.0.1:6379',
    description: 'Redis holding the per-node job queues and the push inbox (redis:// or rediss://).',
    parse: redisUrl,
  },
  redisTlsCaFile: {
    env: 'KUBE_PREWARM_REDIS_TLS_CA_FILE',
    default: '',
    description: "PEM CA bundle a rediss:// server's certificate must chain to. Empty: Node's bundled CAs.",
    parse: str,
  },
  redisTlsCertFile: {
    env: 'KUBE_PREWARM_REDIS_TLS_CERT_FILE',
    default: '',
    description:
      'PEM client certificate for a rediss:// server that asks for one (with KUBE_PREWARM_REDIS_TLS_KEY_FILE).',
    parse: str,
  },
  redisTlsKeyFile: {
    env: 'KUBE_PREWARM_REDIS_TLS_KEY_FILE',
    default: '',
    description: 'PEM private key of KUBE_PREWARM_REDIS_TLS_CERT_FILE.',
    parse: str,
  },
  watchNamespace: {
    env: 'KUBE_PREWARM_WATCH_NAMESPACE',
    default: '',
    description: 'Only watch ImagePrewarms in this namespace. Empty: all namespaces.',
    parse: str,
  },
  leaseNamespace: {
    env: 'KUBE_PREWARM_LEASE_NAMESPACE',
    default: 'kube-prewarm',
    description: 'Namespace of the leader-election Lease (usually the pod namespace).',
    parse: str,
  },
  leaseName: {
    env: 'KUBE_PREWARM_LEASE_NAME',
    default: 'kube-prewarm-operator',
    description: 'Name of the leader-election Lease.',
    parse: str,
  },
  identity: {
    env: 'KUBE_PREWARM_IDENTITY',
    default: '',
    description: "This replica's identity in the Lease. Empty: hostname plus a random suffix.",
    parse: str,
  },
  leaseDurationMs: {
    env: 'KUBE_PREWARM_LEASE_DURATION_MS',
    default: 15_000,
    description: 'How long a Lease is valid without renewal; a standby takes over after this.',
    parse: int(1_000),
  },
  renewDeadlineMs: {
    env: 'KUBE_PREWARM_RENEW_DEADLINE_MS',
    default: 10_000,
    description: 'The leader steps down when it could not renew for this long (< lease duration).',
    parse: int(500),
  },
  retryPeriodMs: {
    env: 'KUBE_PREWARM_RETRY_PERIOD_MS',
    default: 2_000,
    description: 'How often the Lease is renewed or tried (< renew deadline).',
    parse: int(100),
  },
  httpHost: {
    env: 'KUBE_PREWARM_HTTP_HOST',
    default: '0.0.0.0',
    description: 'Listen address for /metrics, /healthz, /readyz and /webhooks.',
    parse: str,
  },
  httpPort: {
    env: 'KUBE_PREWARM_HTTP_PORT',
    default: 8080,
    description: 'Listen port (0: any free port).',
    parse: int(0, 65_535),
  },
  logLevel: {
    env: 'KUBE_PREWARM_LOG_LEVEL',
    default: 'info' as 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent',
    description: 'pino log level.',
    parse: oneOf('trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'),
  },
  concurrency: {
    env: 'KUBE_PREWARM_RECONCILE_CONCURRENCY',
    default: 4,
    description: 'ImagePrewarm reconciles running at once (never two for the same resource).',
    parse: int(1, 64),
  },
  resyncMs: {
    env: 'KUBE_PREWARM_RESYNC_MS',
    default: 300_000,
    description:
      'Every ImagePrewarm is reconciled at least this often (events are for speed, resync for correctness).',
    parse: int(1_000),
  },
  progressPollMs: {
    env: 'KUBE_PREWARM_PROGRESS_POLL_MS',
    default: 2_000,
    description: 'While jobs are in flight, how often their state is read back from Redis into the status.',
    parse: int(100),
  },
  failedRetryAfterMs: {
    env: 'KUBE_PREWARM_FAILED_RETRY_AFTER_MS',
    default: 300_000,
    description: 'A job that failed all its attempts is retried this long after it failed.',
    parse: int(1_000),
  },
  maxGateDeadlineMs: {
    env: 'KUBE_PREWARM_MAX_GATE_DEADLINE_MS',
    default: 3_600_000,
    description:
      "Longest any ImagePrewarm may hold a node's startup taint (kube-prewarm.io/warming), counted from the Node's creation: caps startup.gateDeadlineSeconds, and after it the taint is removed whatever the ImagePrewarms report (fail open).",
    parse: int(10_000),
  },
  maxInFlightJobs: {
    env: 'KUBE_PREWARM_MAX_INFLIGHT_JOBS',
    default: 10_000,
    description: 'Cluster-wide cap on prewarm jobs pending or running, all ImagePrewarms together.',
    parse: int(1),
  },
  registryMaxInFlight: {
    env: 'KUBE_PREWARM_REGISTRY_MAX_INFLIGHT',
    default: {} as Record<string, number>,
    description: 'Per-registry cap on jobs in flight (its pull budget), as host=n[,host=n]. Empty: no cap.',
    parse: hostLimits,
  },
  allowedRegistries: {
    env: 'KUBE_PREWARM_ALLOWED_REGISTRIES',
    default: [PUBLIC_REGISTRIES] as string[],
    description:
      'Registries the operator resolves tags and reads manifests from: hosts (host, host:port; without a port every port) and _default = any public registry. Loopback, private, link-local and metadata addresses (also behind a DNS name) only when listed explicitly. An ImagePrewarm naming another registry gets status reason RegistryNotAllowed (Ready=False for tags, Degraded for digests).',
    parse: registryList,
  },
  plainHttpRegistries: {
    env: 'KUBE_PREWARM_PLAIN_HTTP',
    default: [] as string[],
    description:
      'Registry hosts spoken to over plain HTTP (each must be allowed); loopback registries listed explicitly in KUBE_PREWARM_ALLOWED_REGISTRIES are too.',
    parse: list,
  },
  gateNodesNamespaces: {
    env: 'KUBE_PREWARM_GATE_NODES_NAMESPACES',
    default: [] as string[],
    description:
      'Namespaces whose ImagePrewarms may hold nodes with startup.gateNodes (comma-separated; * = every namespace). Empty: none. Any other gating ImagePrewarm holds no node (nodes are released as if it did not gate) and gets status reason GateNodesNotAllowed.',
    parse: namespaceList,
  },
  pinnedQuotaBytes: {
    env: 'KUBE_PREWARM_PINNED_QUOTA',
    default: 0,
    description:
      "Per-namespace cap on the bytes of images a namespace's ImagePrewarms pin on a node: the sum of the sizes (largest platform, compressed) of their entries' current digests, each digest counted once. 0: no cap. Entries past it, newest first (by ImagePrewarm creation, then spec order), are neither warmed nor pinned and get status reason QuotaExceeded.",
    parse: bytes,
  },
  pinnedQuotaNamespaces: {
    env: 'KUBE_PREWARM_PINNED_QUOTA_NAMESPACES',
    default: {} as Record<string, number>,
    description:
      'Per-namespace overrides of KUBE_PREWARM_PINNED_QUOTA, as namespace=size[,namespace=size] (e.g. ml=200Gi,ci=20Gi; 0 = no cap there).',
    parse: namespaceSizes,
  },
  pullCredentialsNamespace: {
    env: 'KUBE_PREWARM_PULL_CREDENTIALS_NAMESPACE',
    default: '',
    description:
      "Namespace where the operator keeps, per ImagePrewarm, an immutable copy (random name) of just the pull credentials its images' registries need, and names it in the jobs; agents may get Secrets there and nowhere else. Nothing else may live there. Empty: jobs name the ImagePrewarm's own Secrets (namespace/name), which agents use only in the job owner's namespace.",
    parse: (raw) => {
      if (!NAMESPACE.test(raw)) throw new Error('must be a namespace name');
      return raw;
    },
  },
  pullCredentialsMaxAgeMs: {
    env: 'KUBE_PREWARM_PULL_CREDENTIALS_MAX_AGE_MS',
    default: 3_600_000,
    description:
      'A pull-credential copy older than this is replaced by a new one (new name) and the jobs pointed at it; the old one is deleted once no pending or running job names it. Agents refuse copies older than twice this.',
    parse: int(60_000),
  },
  registryRps: {
    env: 'KUBE_PREWARM_REGISTRY_RPS',
    default: 20,
    description: 'Operator requests per second per registry host (tag resolution, manifest reads).',
    parse: int(1),
  },
  registryBurst: {
    env: 'KUBE_PREWARM_REGISTRY_BURST',
    default: 40,
    description: 'Burst allowance on top of KUBE_PREWARM_REGISTRY_RPS.',
    parse: int(1),
  },
  jobAttempts: {
    env: 'KUBE_PREWARM_JOB_ATTEMPTS',
    default: 3,
    description: 'BullMQ attempts per job before it counts as failed.',
    parse: int(1, 100),
  },
  jobBackoffMs: {
    env: 'KUBE_PREWARM_JOB_BACKOFF_MS',
    default: 5_000,
    description: 'First BullMQ retry delay of a job (doubles each attempt).',
    parse: int(0),
  },
  webhooksConfig: {
    env: 'KUBE_PREWARM_WEBHOOKS_CONFIG',
    default: '',
    description:
      'Also serve the webhooks in this process, from this JSON or YAML file (development and tests; the chart runs `kube-prewarm webhooks` instead). Empty: no webhooks here.',
    parse: str,
  },
  shutdownTimeoutMs: {
    env: 'KUBE_PREWARM_SHUTDOWN_TIMEOUT_MS',
    default: 15_000,
    description: 'Graceful shutdown bound on SIGTERM; after it the process exits anyway.',
    parse: int(1_000),
  },
} satisfies Record<string, Setting<unknown>>;

type Settings = typeof SETTINGS;
export type OperatorConfig = { [K in keyof Settings]: Settings[K]['default'] };

/**
 * Reads every setting of `settings` from `env`: unset or empty variables take the default.
 * Throws PW_ERR_INVALID_CONFIG listing all problems at once (`what` names the binary).
 * Shared by every binary of the operator side so each has one validated config.
 */
export function loadSettings<S extends Record<string, Setting<unknown>>>(
  settings: S,
  env: Readonly<Record<string, string | undefined>>,
  what: string,
): { [K in keyof S]: S[K]['default'] } {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [key, s] of Object.entries(settings) as [string, Setting<unknown>][]) {
    const raw = env[s.env];
    if (raw === undefined || raw === '') {
      out[key] = s.default;
      continue;
    }
    try {
      out[key] = s.parse(raw);
    } catch (err) {
      problems.push(`${s.env}: ${(err as Error).message}`);
    }
  }
  if (problems.length > 0) throw invalidConfig(what, problems);
  return out as { [K in keyof S]: S[K]['default'] };
}

function invalidConfig(what: string, problems: string[]): PrewarmError {
  return new PrewarmError(
    ErrorCodes.INVALID_CONFIG,
    `invalid ${what} configuration: ${problems.join('; ')}`,
    {
      detail: { problems },
    },
  );
}

/**
 * Reads and validates every setting from `env`. Unset or empty variables take the
 * default. Throws PW_ERR_INVALID_CONFIG listing all problems at once.
 */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): OperatorConfig {
  const cfg: OperatorConfig = loadSettings(SETTINGS, env, 'operator');
  if (!(cfg.retryPeriodMs < cfg.renewDeadlineMs && cfg.renewDeadlineMs < cfg.leaseDurationMs)) {
    throw invalidConfig('operator', [
      'need KUBE_PREWARM_RETRY_PERIOD_MS < KUBE_PREWARM_RENEW_DEADLINE_MS < KUBE_PREWARM_LEASE_DURATION_MS',
    ]);
  }
  const egress = new EgressPolicy({ allowedRegistries: cfg.allowedRegistries });
  const notAllowed = cfg.plainHttpRegistries.filter((h) => !egress.allowsRegistry(h));
  if (notAllowed.length > 0)
    throw invalidConfig(
      'operator',
      notAllowed.map(
        (h) => `KUBE_PREWARM_PLAIN_HTTP: ${h} is not allowed by KUBE_PREWARM_ALLOWED_REGISTRIES`,
      ),
    );
  if (cfg.identity === '') cfg.identity = `${hostname()}-${Math.random().toString(36).slice(2, 8)}`;
  return cfg;
}

/** The settings as a Markdown table (for operator/README.md). */
export function configTable(settings: Record<string, Setting<unknown>> = SETTINGS): string {
  const rows = Object.values(settings).map((s: Setting<unknown>) => {
    const d = Array.isArray(s.default)
      ? s.default.join(',')
      : typeof s.default === 'object'
        ? ''
        : String(s.default);
    return `| \`${s.env}\` | ${d === '' ? '(empty)' : `\`${d}\``} | ${s.description} |`;
  });
  return ['| Variable | Default | Description |', '|---|---|---|', ...rows].join('\n');
}
