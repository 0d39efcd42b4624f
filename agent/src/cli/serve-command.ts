import { parseArgs } from 'node:util';
import pino from 'pino';
import { RegistryClient } from '../../../oci/src/client.js';
import { EgressPolicy } from '../../../oci/src/egress-policy.js';
import { ErrorCodes, isPrewarmError, PrewarmError } from '../../../oci/src/errors.js';
import { hostPlatform, parsePlatform } from '../../../oci/src/platform.js';
import { BlobFetcher } from '../fetch/blob-fetcher.js';
import { Mirror } from '../mirror/mirror.js';
import type { TagPolicy } from '../mirror/mirror-options.js';
import { parseDuration, parseSize } from '../util/format.js';
import { openStoreFromFlags, STORE_REGISTRY_OPTIONS } from './common-flags.js';
import { describeError, ExitCodes, exitCodeFor } from './exit-codes.js';

export const SERVE_USAGE = `serve options (kube-prewarm serve --store <dir> --listen <host:port>):
  --store <dir>              Store directory (default: ./.prewarm-store)
  --listen <host:port>       Address to serve on (default 127.0.0.1:5055; port 0 = any free port)
  --tag-policy <p>           upstream-first (default) or store-first
  --resolve-timeout <dur>    Upstream tag resolution before falling back to the store (default 2s)
  --deadline <dur>           Time to start an answer before 503 (default 5s)
  --stall-timeout <dur>      Cut a streaming body whose download stalls this long (default 30s)
  --upstreams <hosts>        Registries the mirror may contact: hosts (host, host:port) and
                             _default = any public registry (default: _default and the
                             --plain-http hosts; loopback, private and link-local hosts
                             only when listed; * = anything)
  --default-registry <host>  Upstream for requests without ?ns= (default: none, store only)
  --platform <os/arch[/v]>   Platform whose image records answer tags (default: this host's)
  --plain-http <hosts>       Registry hosts spoken to over HTTP (loopback ones listed in
                             --upstreams always are)
  The mirror forwards each client's own Authorization upstream and has no credentials of
  its own (--docker-config is refused).
  --bandwidth <size>         Fetcher bandwidth cap for misses, bytes/s (default: unlimited)
  --log-level <level>        debug, info (default), warn, error
  --no-fsync                 Skip fsync (throwaway stores only)
Prints {"listening":"<host:port>"} on stdout once bound; SIGTERM/SIGINT close it gracefully.
`;

/** A duration flag (`250ms`, `2s`, `1m`, `1h`, or plain milliseconds) as PW_ERR_INVALID_CONFIG when bad. */
function durationFlag(s: string, name: string): number {
  try {
    return parseDuration(s);
  } catch (err) {
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `${name}: ${(err as Error).message}`);
  }
}

/**
 * `kube-prewarm serve`: the mirror over a store directory, with its own fetcher for misses.
 * Resolves with the exit code once a signal closed it (0), or at once on bad arguments (2)
 * or a failure to start.
 */
export async function serveCommand(argv: string[]): Promise<number> {
  let values: ReturnType<typeof parse>['values'];
  try {
    ({ values } = parse(argv));
  } catch (err) {
    process.stderr.write(`kube-prewarm serve: ${(err as Error).message}\n\n${SERVE_USAGE}`);
    return ExitCodes.USAGE;
  }
  const log = pino({ level: values['log-level'] ?? 'info' }, pino.destination(2));
  let client: RegistryClient | undefined;
  let fetcher: BlobFetcher | undefined;
  let mirror: Mirror | undefined;
  const controller = new AbortController();
  const onSignal = () => controller.abort();
  try {
    const policy = values['tag-policy'] ?? 'upstream-first';
    if (policy !== 'upstream-first' && policy !== 'store-first')
      throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `--tag-policy must be upstream-first or store-first`);
    if (values['docker-config'] !== undefined)
      throw new PrewarmError(
        ErrorCodes.INVALID_CONFIG,
        '--docker-config: the mirror forwards each client its own credentials and uses none of its own',
      );
    const list = (v: string) =>
      v
        .split(',')
        .map((h) => h.trim())
        .filter(Boolean);
    const plainHttp = list(values['plain-http'] ?? '');
    // Hosts named with --plain-http are registries configured on the command line: reachable
    // by default; with an explicit --upstreams they must be in it.
    const upstreams = values.upstreams === undefined ? ['_default', ...plainHttp] : list(values.upstreams);
    let egress: EgressPolicy;
    try {
      egress = upstreams.includes('*')
        ? EgressPolicy.permissive((h) => plainHttp.includes(h) || EgressPolicy.permissive().plainHttp(h))
        : new EgressPolicy({ allowedRegistries: upstreams, plainHttp });
    } catch (err) {
      throw new PrewarmError(
        ErrorCodes.INVALID_CONFIG,
        `--upstreams/--plain-http: ${(err as Error).message}`,
      );
    }
    const outside = plainHttp.filter((h) => !egress.allowsRegistry(h));
    if (outside.length > 0)
      throw new PrewarmError(
        ErrorCodes.INVALID_CONFIG,
        `--plain-http: not in --upstreams: ${outside.join(', ')}`,
      );
    // Few retries: a mirror that waits on a sick upstream holds up the pull it should speed up.
    client = new RegistryClient({ egress, retry: { attempts: 2, maxDelayMs: 500 } });
    const store = await openStoreFromFlags(values);
    fetcher = new BlobFetcher(store, {
      bandwidthBytesPerSec: values.bandwidth ? parseSize(values.bandwidth) : undefined,
    });
    mirror = new Mirror(
      { store, fetcher, client },
      {
        listen: values.listen ?? '127.0.0.1:5055',
        tagPolicy: policy as TagPolicy,
        resolveTimeoutMs: values['resolve-timeout']
          ? durationFlag(values['resolve-timeout'], '--resolve-timeout')
          : undefined,
        deadlineMs: values.deadline ? durationFlag(values.deadline, '--deadline') : undefined,
        stallTimeoutMs: values['stall-timeout']
          ? durationFlag(values['stall-timeout'], '--stall-timeout')
          : undefined,
        defaultRegistry: values['default-registry'],
        platforms: [values.platform ? parsePlatform(values.platform) : hostPlatform()],
        logger: log,
      },
    );
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    const address = await mirror.start(controller.signal);
    process.stdout.write(`${JSON.stringify({ listening: address, store: store.root })}\n`);
    await new Promise<void>((resolve) => {
      if (controller.signal.aborted) resolve();
      else controller.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    return ExitCodes.OK;
  } catch (err) {
    const message = describeError(err);
    process.stderr.write(`kube-prewarm serve: ${message}\n`);
    return isPrewarmError(err, ErrorCodes.INVALID_CONFIG) ? ExitCodes.USAGE : exitCodeFor(err);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await mirror?.close();
    await fetcher?.close();
    await client?.close();
  }
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: false,
    options: {
      ...STORE_REGISTRY_OPTIONS,
      listen: { type: 'string' },
      'tag-policy': { type: 'string' },
      'resolve-timeout': { type: 'string' },
      deadline: { type: 'string' },
      'stall-timeout': { type: 'string' },
      upstreams: { type: 'string' },
      'default-registry': { type: 'string' },
      platform: { type: 'string' },
      bandwidth: { type: 'string' },
      'log-level': { type: 'string' },
    },
  });
}
