import { loadDockerConfigFile, StaticCredentials } from '../../../oci/src/auth.js';
import { isLoopbackHost, RegistryClient, type RegistryClientOptions } from '../../../oci/src/client.js';
import { FsBlobStore } from '../store/fs-store.js';

/**
 * The flags every node-side command that reads a registry into a store takes (`warm`,
 * `serve`); spread into its `parseArgs` options so that they are spelled alike.
 */
export const STORE_REGISTRY_OPTIONS = {
  store: { type: 'string' },
  'docker-config': { type: 'string' },
  'plain-http': { type: 'string' },
  'no-fsync': { type: 'boolean' },
  'no-direct-io': { type: 'boolean' },
} as const;

/** Those flags' parsed values. */
export interface StoreRegistryFlags {
  /** Store directory. Default `./.prewarm-store`. */
  store?: string | undefined;
  /** A dockerconfigjson file with registry credentials. Default: anonymous. */
  'docker-config'?: string | undefined;
  /** Comma-separated registry hosts spoken to over HTTP (loopback hosts always are). */
  'plain-http'?: string | undefined;
  /** Skip fsync: throwaway stores only. */
  'no-fsync'?: boolean | undefined;
  /** Buffered writes even where O_DIRECT works. */
  'no-direct-io'?: boolean | undefined;
}

/**
 * A registry client with the flags' credentials and plain-HTTP hosts; `opts` adds the rest
 * (retry policy…). Throws what reading the docker config throws (a missing file, or
 * PW_ERR_INVALID_CONFIG for bad JSON); the caller closes the client.
 */
export async function registryClientFromFlags(
  flags: StoreRegistryFlags,
  opts: Omit<RegistryClientOptions, 'credentials' | 'plainHttp'> = {},
): Promise<RegistryClient> {
  const credentials = flags['docker-config']
    ? await loadDockerConfigFile(flags['docker-config'])
    : new StaticCredentials();
  const plain = new Set((flags['plain-http'] ?? '').split(',').filter(Boolean));
  return new RegistryClient({ ...opts, credentials, plainHttp: (h) => isLoopbackHost(h) || plain.has(h) });
}

/** The store the flags name, initialised (created when missing); throws what `init()` throws. */
export function openStoreFromFlags(flags: StoreRegistryFlags): Promise<FsBlobStore> {
  return new FsBlobStore(flags.store ?? '.prewarm-store', {
    fsync: flags['no-fsync'] !== true,
    directIo: flags['no-direct-io'] !== true,
  }).init();
}
