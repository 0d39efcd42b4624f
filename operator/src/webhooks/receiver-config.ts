/**
 * The configuration of `kube-prewarm webhooks`, the webhook receiver process: every
 * setting declared once with its environment variable, default and description (the table
 * in docs/webhooks.md is checked against this list by a test), read with the operator's
 * config engine. What the receiver accepts (sources, secrets, windows) is not here but in
 * the file `KUBE_PREWARM_WEBHOOKS_CONFIG` names, which it re-reads when it changes.
 * Only webhooks-main.ts passes `process.env` in.
 */
import { int, loadSettings, oneOf, redisUrl, type Setting, str } from '../config.js';
import { DEFAULT_MAX_INFLIGHT_BODY_BYTES } from './body-budget.js';
import { invalidConfig } from './config.js';

export const RECEIVER_SETTINGS = {
  redisUrl: {
    env: 'KUBE_PREWARM_REDIS_URL',
    default: 'redis://127.0.0.1:6379',
    description:
      'Redis holding the push stream the operator consumes and the webhook dedup keys (redis:// or rediss://).',
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
  configPath: {
    env: 'KUBE_PREWARM_WEBHOOKS_CONFIG',
    default: '',
    description: 'Path to the JSON or YAML file with the webhook sources and secrets (required).',
    parse: str,
  },
  reloadIntervalMs: {
    env: 'KUBE_PREWARM_WEBHOOKS_RELOAD_MS',
    default: 10_000,
    description:
      'How often the configuration file is checked for changes (a changed Secret is applied without a restart). 0: never.',
    parse: int(0),
  },
  webhooksHost: {
    env: 'KUBE_PREWARM_WEBHOOKS_HOST',
    default: '0.0.0.0',
    description: 'Listen address of /webhooks/<source> (the port the Ingress reaches).',
    parse: str,
  },
  webhooksPort: {
    env: 'KUBE_PREWARM_WEBHOOKS_PORT',
    default: 8080,
    description: 'Listen port of /webhooks/<source> (0: any free port).',
    parse: int(0, 65_535),
  },
  httpHost: {
    env: 'KUBE_PREWARM_HTTP_HOST',
    default: '0.0.0.0',
    description: 'Listen address of /metrics, /healthz and /readyz.',
    parse: str,
  },
  httpPort: {
    env: 'KUBE_PREWARM_HTTP_PORT',
    default: 9090,
    description:
      'Listen port of /metrics, /healthz and /readyz, kept apart so probes answer while the webhook port is at its connection cap (0: any free port).',
    parse: int(0, 65_535),
  },
  maxConnections: {
    env: 'KUBE_PREWARM_WEBHOOKS_MAX_CONNECTIONS',
    default: 256,
    description: 'Open connections on the webhook port at most; more are closed at accept.',
    parse: int(1, 100_000),
  },
  maxInflightBodyBytes: {
    env: 'KUBE_PREWARM_WEBHOOKS_MAX_INFLIGHT_BODY_BYTES',
    default: DEFAULT_MAX_INFLIGHT_BODY_BYTES,
    description:
      'Bytes all request bodies being read may hold together (half of it for senders not yet authenticated); beyond it, 503 + Retry-After.',
    parse: int(64 * 1024),
  },
  headersTimeoutMs: {
    env: 'KUBE_PREWARM_WEBHOOKS_HEADERS_TIMEOUT_MS',
    default: 10_000,
    description: 'Time a sender may take to send all request headers (slow senders are cut off).',
    parse: int(1_000),
  },
  logLevel: {
    env: 'KUBE_PREWARM_LOG_LEVEL',
    default: 'info' as 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent',
    description: 'pino log level.',
    parse: oneOf('trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'),
  },
  shutdownTimeoutMs: {
    env: 'KUBE_PREWARM_SHUTDOWN_TIMEOUT_MS',
    default: 15_000,
    description:
      'Graceful shutdown bound on SIGTERM (new deliveries get 503, accepted ones reach Redis); after it the process exits anyway.',
    parse: int(1_000),
  },
} satisfies Record<string, Setting<unknown>>;

type ReceiverSettings = typeof RECEIVER_SETTINGS;
export type ReceiverConfig = { [K in keyof ReceiverSettings]: ReceiverSettings[K]['default'] };

/**
 * Reads and validates every setting from `env`; throws PW_ERR_INVALID_CONFIG listing all
 * problems, or when no configuration file is named.
 */
export function loadReceiverConfig(env: Readonly<Record<string, string | undefined>>): ReceiverConfig {
  const cfg: ReceiverConfig = loadSettings(RECEIVER_SETTINGS, env, 'webhook receiver');
  if (cfg.configPath === '')
    throw invalidConfig(`${RECEIVER_SETTINGS.configPath.env} must name the configuration file`);
  return cfg;
}
