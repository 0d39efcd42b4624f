/**
 * Runs the real webhook receiver (`operator/src/webhooks-main.ts`, what `kube-prewarm
 * webhooks` starts) as a child process on free ports, with its configuration file in a
 * temp dir, and waits until /readyz says it is ready (Redis connected).
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { WebhookOptions } from '../../../operator/src/webhooks/index.js';
import { REPO_ROOT } from '../../harness/kube.js';
import { type ManagedProcess, spawnProcess, waitForHttp } from '../../harness/process.js';
import { freePort } from '../../harness/tmp.js';

export interface ReceiverProcess {
  readonly process: ManagedProcess;
  readonly pid: number;
  /** Port of /webhooks/<source>. */
  readonly webhooksPort: number;
  /** Port of /metrics, /healthz, /readyz. */
  readonly httpPort: number;
  /** The configuration file it reads (rewrite it to test reloads). */
  readonly configPath: string;
  readonly logPath: string;
  /** `http://127.0.0.1:<webhooksPort>/webhooks/<source>` */
  url(source: string): string;
  /** Replaces the configuration file (options as JSON, or raw text). */
  writeConfig(options: WebhookOptions | string): Promise<void>;
  stop(): Promise<void>;
}

export interface ReceiverProcessOptions {
  /** Directory for the configuration file and the log. */
  dir: string;
  redisUrl: string;
  options: WebhookOptions | string;
  /** Extra environment (KUBE_PREWARM_WEBHOOKS_*), on top of the test defaults. */
  env?: Record<string, string>;
  /** Extra node flags before the entry point (e.g. --max-old-space-size). */
  nodeFlags?: string[];
  name?: string;
}

export async function startReceiver(opts: ReceiverProcessOptions): Promise<ReceiverProcess> {
  const name = opts.name ?? 'webhooks-receiver';
  const configPath = join(opts.dir, `${name}.yaml`);
  const writeConfig = (o: WebhookOptions | string): Promise<void> =>
    writeFile(configPath, typeof o === 'string' ? o : JSON.stringify(o));
  await writeConfig(opts.options);
  const [webhooksPort, httpPort] = [await freePort(), await freePort()];
  const logPath = join(opts.dir, `${name}.log`);
  const proc = await spawnProcess({
    name,
    command: process.execPath,
    args: [...(opts.nodeFlags ?? []), '--import', 'tsx', join(REPO_ROOT, 'operator/src/webhooks-main.ts')],
    logPath,
    cwd: REPO_ROOT,
    // Nothing inherited: in particular no KUBECONFIG, which the receiver must not need.
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '/root',
      KUBE_PREWARM_REDIS_URL: opts.redisUrl,
      KUBE_PREWARM_WEBHOOKS_CONFIG: configPath,
      KUBE_PREWARM_WEBHOOKS_HOST: '127.0.0.1',
      KUBE_PREWARM_WEBHOOKS_PORT: String(webhooksPort),
      KUBE_PREWARM_HTTP_HOST: '127.0.0.1',
      KUBE_PREWARM_HTTP_PORT: String(httpPort),
      KUBE_PREWARM_LOG_LEVEL: 'debug',
      ...opts.env,
    },
  });
  try {
    await waitForHttp(`http://127.0.0.1:${httpPort}/readyz`, {
      process: proc,
      timeoutMs: 60_000,
      ready: (s) => s === 200,
    });
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return {
    process: proc,
    pid: proc.pid,
    webhooksPort,
    httpPort,
    configPath,
    logPath,
    url: (source) => `http://127.0.0.1:${webhooksPort}/webhooks/${source}`,
    writeConfig,
    stop: async () => {
      await proc.stop();
    },
  };
}
