import { RegistryClient } from '../../../oci/src/client.js';
import { parseDigest } from '../../../oci/src/digest.js';
import { FsBlobStore } from '../store/fs-store.js';
import { BlobFetcher, type BlobFetcherOptions, type FetchResult } from './blob-fetcher.js';
import { RegistrySource } from './sources.js';

/**
 * Fetches one blob with the production fetcher, for bench/fetch. Not used by the agent.
 * The store is fsync'd like production unless `fsync: false`.
 */
export async function fetchBlobForBench(opts: {
  registryHost: string;
  repository: string;
  digest: string;
  size: number;
  storeDir: string;
  plainHttp: true;
  fsync?: boolean;
  fetcher?: BlobFetcherOptions;
}): Promise<{ bytes: number; result: FetchResult }> {
  const store = await new FsBlobStore(opts.storeDir, { fsync: opts.fsync ?? true }).init();
  const client = new RegistryClient({ plainHttp: () => opts.plainHttp });
  const fetcher = new BlobFetcher(store, opts.fetcher);
  try {
    const result = await fetcher.fetch(
      {
        registry: opts.registryHost,
        repository: opts.repository,
        digest: parseDigest(opts.digest),
        size: opts.size,
      },
      { sources: [new RegistrySource(client, opts.registryHost)] },
    );
    return { bytes: result.bytesFromRegistry, result };
  } finally {
    await fetcher.close();
    await client.close();
  }
}
