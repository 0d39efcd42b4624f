import { parseArgs } from 'node:util';
import type { RegistryClient } from '../../../oci/src/client.js';
import { ErrorCodes, isPrewarmError, PrewarmError } from '../../../oci/src/errors.js';
import { hostPlatform, parsePlatform } from '../../../oci/src/platform.js';
import { parseReference } from '../../../oci/src/reference.js';
import { BlobFetcher } from '../fetch/blob-fetcher.js';
import { ImageWarmer } from '../fetch/image-warmer.js';
import { formatBytes, formatDuration, parseSize } from '../util/format.js';
import { openStoreFromFlags, registryClientFromFlags, STORE_REGISTRY_OPTIONS } from './common-flags.js';
import { describeError, ExitCodes, exitCodeFor } from './exit-codes.js';
import { HOSTS_USAGE, hostsTomlCommand } from './hosts-command.js';
import { ProgressView } from './progress.js';
import { SERVE_USAGE, serveCommand } from './serve-command.js';

const USAGE = `Usage: kube-prewarm <command> [options]

Commands:
  warm <image-ref>   Fetch an image into a local content-addressed store (resumable).
  agent              Run the node agent daemon (configured by KUBE_PREWARM_* env; docs/agent.md).
  serve              Serve a store as a node-local OCI mirror for containerd (hosts.toml).
  hosts-toml         Point containerd at the mirror (install, uninstall, or run beside the agent).
  operator           Run the controller (configured by env; operator/README.md). Dispatched by
                     bin/kube-prewarm.js: the node-side CLI never loads operator code.

warm options:
  --store <dir>            Store directory (default: ./.prewarm-store)
  --platform <os/arch[/v]> Platform to pick from a multi-arch index (default: this host's)
  --docker-config <file>   Credentials: a dockerconfigjson / ~/.docker/config.json file
  --plain-http <hosts>     Comma-separated registry hosts spoken to over HTTP (loopback always is)
  --chunk-size <size>      Ranged request size (default 16MiB)
  --concurrency <n>        Parallel ranges per blob, at most (default 16)
  --initial-concurrency <n> Ranges a blob starts with, doubled while throughput grows (default 4)
  --max-connections <n>    Parallel requests in total (default 32)
  --bandwidth <size>       Cap in bytes/s, e.g. 50MiB (default: unlimited)
  --retries <n>            Attempts per request before giving up (default 6; 8 per blob)
  --json                   Print a JSON summary on stdout instead of a progress bar
  --no-fsync               Skip fsync (throwaway stores only)
  --no-direct-io           Buffered writes through the page cache even where O_DIRECT works

${SERVE_USAGE}
${HOSTS_USAGE}
Exit codes: 0 ok, 2 usage, 3 image/blob/platform not found, 4 auth, 5 digest or
size mismatch, 6 network/registry, 7 disk full, 130 interrupted (rerun to resume).
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? ExitCodes.USAGE : ExitCodes.OK;
  }
  if (command === 'warm') return warm(rest);
  // The node agent daemon; configured by KUBE_PREWARM_* variables (docs/agent.md). Loaded lazily.
  if (command === 'agent') return (await import('../daemon/main.js')).runAgentFromProcess();
  if (command === 'serve') return serveCommand(rest);
  if (command === 'hosts-toml') return hostsTomlCommand(rest);
  process.stderr.write(`kube-prewarm: unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
  return ExitCodes.USAGE;
}

async function warm(argv: string[]): Promise<number> {
  let args: ReturnType<typeof parseWarmArgs>;
  try {
    args = parseWarmArgs(argv);
  } catch (err) {
    process.stderr.write(`kube-prewarm warm: ${(err as Error).message}\n\n${USAGE}`);
    return ExitCodes.USAGE;
  }
  const { values, positionals } = args;
  const controller = new AbortController();
  const onSignal = () => controller.abort(new PrewarmError(ErrorCodes.ABORTED, 'interrupted'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const json = values.json === true;
  const view = json ? undefined : new ProgressView();
  let client: RegistryClient | undefined;
  let fetcher: BlobFetcher | undefined;
  try {
    if (positionals.length !== 1)
      throw new PrewarmError(ErrorCodes.INVALID_CONFIG, 'warm takes exactly one image reference');
    const ref = parseReference(positionals[0] as string);
    const platform = values.platform ? parsePlatform(values.platform) : hostPlatform();
    const retry = values.retries ? { attempts: positiveInt(values.retries, '--retries') } : undefined;
    client = await registryClientFromFlags(values, retry ? { retry } : {});
    const store = await openStoreFromFlags(values);
    fetcher = new BlobFetcher(store, {
      chunkSize: values['chunk-size'] ? parseSize(values['chunk-size']) : undefined,
      concurrencyPerBlob: values.concurrency ? positiveInt(values.concurrency, '--concurrency') : undefined,
      initialConcurrency: values['initial-concurrency']
        ? positiveInt(values['initial-concurrency'], '--initial-concurrency')
        : undefined,
      maxConnections: values['max-connections']
        ? positiveInt(values['max-connections'], '--max-connections')
        : undefined,
      bandwidthBytesPerSec: values.bandwidth ? parseSize(values.bandwidth) : undefined,
      retry,
    });
    const warmer = new ImageWarmer(client, fetcher, store);
    const result = await warmer.warm(ref, {
      platform,
      signal: controller.signal,
      ...(view ? { onProgress: (p) => view.update(p) } : {}),
    });
    view?.stop();
    if (json) {
      process.stdout.write(`${JSON.stringify({ ok: true, ...result, store: store.root }, null, 2)}\n`);
    } else {
      const secs = result.durationMs / 1000;
      const fetched = result.bytesFromRegistry + result.bytesFromPeers;
      process.stderr.write(
        `warm ${result.reference}\n` +
          `  platform ${result.record.platform}, manifest ${result.record.manifestDigest}\n` +
          `  ${result.record.blobs.length} blobs, ${formatBytes(result.bytesTotal)}: fetched ${formatBytes(fetched)} ` +
          `(${formatBytes(result.bytesFromRegistry)} registry, ${formatBytes(result.bytesFromPeers)} peers), ` +
          `${formatBytes(result.bytesAlreadyPresent)} already present\n` +
          `  ${formatDuration(result.durationMs)} (${formatBytes(fetched / Math.max(secs, 0.001))}/s), store ${store.root}\n`,
      );
    }
    return ExitCodes.OK;
  } catch (err) {
    view?.stop();
    const code = exitCodeFor(err);
    const message = describeError(err);
    if (json) {
      process.stdout.write(
        `${JSON.stringify({ ok: false, error: { code: isPrewarmError(err) ? err.code : 'PW_ERR_INTERNAL', message: isPrewarmError(err) ? err.message : String(err) } })}\n`,
      );
    }
    process.stderr.write(`kube-prewarm warm: ${message}\n`);
    if (code === ExitCodes.INTERRUPTED)
      process.stderr.write('partial downloads are kept; run the same command again to resume\n');
    return code;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await fetcher?.close();
    await client?.close();
  }
}

function parseWarmArgs(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      ...STORE_REGISTRY_OPTIONS,
      platform: { type: 'string' },
      'chunk-size': { type: 'string' },
      concurrency: { type: 'string' },
      'initial-concurrency': { type: 'string' },
      'max-connections': { type: 'string' },
      bandwidth: { type: 'string' },
      retries: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
}

function positiveInt(s: string, name: string): number {
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `${name} must be a positive integer`);
  return n;
}
