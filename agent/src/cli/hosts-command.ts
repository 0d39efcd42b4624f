/**
 * `kube-prewarm hosts-toml`: points containerd at the node-local mirror through hosts.toml
 * files (HostsTomlInstaller: atomic writes, foreign files moved aside and restored, only
 * our own files removed). The chart runs `hosts-toml run` as a small container beside the
 * agent, so only that container has containerd's certs.d writable and the long-running
 * agent does not: it waits until the mirror answers, installs, keeps the files only while
 * the mirror stays healthy, and removes them (restoring what was there) when stopped.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import pino, { type Logger } from 'pino';
import { ErrorCodes, isPrewarmError, PrewarmError } from '../../../oci/src/errors.js';
import { isValidRegistryHost, registryEndpointHost } from '../../../oci/src/reference.js';
import { HostsTomlInstaller } from '../runtime/hosts-installer.js';
import { DEFAULT_NAMESPACE, type HostsEntry } from '../runtime/hosts-toml.js';
import { describeError, ExitCodes } from './exit-codes.js';

export const HOSTS_USAGE = `hosts-toml (kube-prewarm hosts-toml <install|uninstall|run> [options]):
  install                    Write one hosts.toml per registry pointing at the mirror, once
  uninstall                  Remove ours (restoring files they replaced), once
  run                        The chart's container: wait for the mirror, install, keep the
                             files only while the mirror answers, uninstall on SIGTERM
  --certs-dir <dir>          containerd's registry config_path (default /etc/containerd/certs.d)
  --mirror <url>             The mirror containerd should use (default http://127.0.0.1:5050)
  --registries <hosts>       Comma-separated registry hosts; _default = every registry without a
                             file of its own (default _default)
  --plain-http <hosts>       Registries whose upstream (the fallback) is plain HTTP
  --interval <dur>           run: mirror health check period (default 5s)
  --failures <n>             run: failed checks in a row before the files are taken away (default 3)
  --log-level <level>        debug, info (default), warn, error
`;

/** What `run` needs beyond the installer; exported for tests. */
export interface HostsRunOptions {
  installer: HostsTomlInstaller;
  entries: HostsEntry[];
  /** Mirror base URL; healthy = `GET <mirror>/v2/` answers below 500 within 2 s. */
  mirror: string;
  intervalMs: number;
  failures: number;
  logger: Logger;
  signal: AbortSignal;
}

/** Builds the entries: the upstream of each registry is its https (or listed plain-HTTP) endpoint. */
export function hostsEntries(
  registries: readonly string[],
  mirror: string,
  plainHttp: readonly string[],
): HostsEntry[] {
  const plain = new Set(plainHttp);
  return registries.map((registry) => {
    if (registry !== DEFAULT_NAMESPACE && !isValidRegistryHost(registry))
      throw new PrewarmError(
        ErrorCodes.INVALID_CONFIG,
        `--registries: ${JSON.stringify(registry)} is not a registry host`,
      );
    const entry: HostsEntry = { registry, mirrors: [mirror] };
    if (registry !== DEFAULT_NAMESPACE)
      entry.server = `${plain.has(registry) ? 'http' : 'https'}://${registryEndpointHost(registry)}`;
    return entry;
  });
}

async function mirrorHealthy(mirror: string): Promise<boolean> {
  try {
    const res = await fetch(`${mirror}/v2/`, { signal: AbortSignal.timeout(2_000), redirect: 'manual' });
    await res.body?.cancel();
    return res.status < 500;
  } catch {
    return false;
  }
}

/**
 * The `run` loop: resolves once `signal` aborted and the files are removed. Install and
 * removal failures are logged and retried at the next check (a read-only or full disk must
 * not crash-loop the container); the final uninstall's failure is thrown.
 */
export async function runHostsToml(o: HostsRunOptions): Promise<void> {
  const names = o.entries.map((e) => e.registry);
  let installed = false;
  let failed = 0;
  while (!o.signal.aborted) {
    const healthy = await mirrorHealthy(o.mirror);
    failed = healthy ? 0 : failed + 1;
    try {
      if (healthy) {
        const outcome = await o.installer.install(o.entries);
        // Files of ours for registries no longer listed (an upgrade dropped them, or an
        // earlier container was killed before it could clean up).
        const stale = (await o.installer.listManaged()).filter((r) => !names.includes(r));
        if (stale.length > 0)
          o.logger.info(
            { files: Object.fromEntries(await o.installer.uninstall(stale)) },
            'stale hosts.toml removed',
          );
        const changed = [...outcome].filter(([, v]) => v !== 'unchanged');
        if (!installed || changed.length > 0)
          o.logger.info({ mirror: o.mirror, files: Object.fromEntries(outcome) }, 'hosts.toml installed');
        installed = true;
      } else if (installed && failed >= o.failures) {
        const outcome = await o.installer.uninstall(names);
        o.logger.warn(
          { mirror: o.mirror, failedChecks: failed, files: Object.fromEntries(outcome) },
          'mirror not answering: hosts.toml removed, containerd pulls from the registries directly',
        );
        installed = false;
      } else if (!installed) {
        o.logger.debug({ mirror: o.mirror }, 'waiting for the mirror');
      }
    } catch (err) {
      o.logger.error({ err: describeError(err) }, 'hosts.toml update failed; retrying');
    }
    await sleep(o.intervalMs, undefined, { signal: o.signal }).catch(() => undefined);
  }
  // Every file of ours, listed or not: nothing keeps routing pulls to a mirror that is gone.
  const outcome = await o.installer.uninstall();
  o.logger.info({ files: Object.fromEntries(outcome) }, 'hosts.toml removed');
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      'certs-dir': { type: 'string' },
      mirror: { type: 'string' },
      registries: { type: 'string' },
      'plain-http': { type: 'string' },
      interval: { type: 'string' },
      failures: { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
}

function list(s: string | undefined, fallback: string[]): string[] {
  if (s === undefined) return fallback;
  return s
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean);
}

function durationMs(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s.trim());
  if (!m)
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `--interval: invalid duration ${JSON.stringify(s)}`);
  const ms = Number(m[1]) * (m[2] === 'm' ? 60_000 : m[2] === 'ms' ? 1 : 1000);
  if (ms < 100) throw new PrewarmError(ErrorCodes.INVALID_CONFIG, '--interval must be at least 100ms');
  return Math.round(ms);
}

/** `kube-prewarm hosts-toml …`; resolves with the exit code. */
export async function hostsTomlCommand(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (err) {
    process.stderr.write(`kube-prewarm hosts-toml: ${(err as Error).message}\n\n${HOSTS_USAGE}`);
    return ExitCodes.USAGE;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(HOSTS_USAGE);
    return ExitCodes.OK;
  }
  const [action] = positionals;
  if (positionals.length !== 1 || !['install', 'uninstall', 'run'].includes(action ?? '')) {
    process.stderr.write(`kube-prewarm hosts-toml: want one of install, uninstall, run\n\n${HOSTS_USAGE}`);
    return ExitCodes.USAGE;
  }
  const log = pino({ level: values['log-level'] ?? 'info' }, pino.destination(2));
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  try {
    const mirror = (values.mirror ?? 'http://127.0.0.1:5050').replace(/\/+$/, '');
    const registries = list(values.registries, [DEFAULT_NAMESPACE]);
    if (registries.length === 0) throw new PrewarmError(ErrorCodes.INVALID_CONFIG, '--registries is empty');
    const entries = hostsEntries(registries, mirror, list(values['plain-http'], []));
    const installer = new HostsTomlInstaller({
      configPath: values['certs-dir'] ?? '/etc/containerd/certs.d',
    });
    if (action === 'install') {
      log.info({ files: Object.fromEntries(await installer.install(entries)) }, 'hosts.toml installed');
    } else if (action === 'uninstall') {
      log.info({ files: Object.fromEntries(await installer.uninstall(registries)) }, 'hosts.toml removed');
    } else {
      const failures = Number(values.failures ?? '3');
      if (!Number.isSafeInteger(failures) || failures < 1)
        throw new PrewarmError(ErrorCodes.INVALID_CONFIG, '--failures must be a positive integer');
      await runHostsToml({
        installer,
        entries,
        mirror,
        intervalMs: durationMs(values.interval ?? '5s'),
        failures,
        logger: log,
        signal: controller.signal,
      });
    }
    return ExitCodes.OK;
  } catch (err) {
    process.stderr.write(`kube-prewarm hosts-toml: ${describeError(err)}\n`);
    return isPrewarmError(err) && err.code === ErrorCodes.INVALID_CONFIG
      ? ExitCodes.USAGE
      : ExitCodes.FAILURE;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}
