import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { BlobFetcher, type BlobFetcherOptions } from '../../agent/src/fetch/blob-fetcher.js';
import { ImageWarmer, type WarmProgress, type WarmResult } from '../../agent/src/fetch/image-warmer.js';
import { FsBlobStore } from '../../agent/src/store/fs-store.js';
import { StaticCredentials } from '../../oci/src/auth.js';
import { RegistryClient } from '../../oci/src/client.js';
import type { Digest } from '../../oci/src/digest.js';
import type { Platform } from '../../oci/src/platform.js';
import { parseReference } from '../../oci/src/reference.js';

export interface WarmForTest {
  creds?: { host: string; username: string; password: string };
  platform?: Platform;
  fetcher?: BlobFetcherOptions;
  onProgress?: (p: WarmProgress) => void;
  signal?: AbortSignal;
}

/** Fast retries so fault tests finish quickly; production defaults are slower. */
export const TEST_RETRY = { attempts: 6, baseDelayMs: 20, maxDelayMs: 1500 };

/** Warms `ref` into `storeDir` with the production classes, small chunks so tests exercise parallel ranges. */
export async function warmImage(
  ref: string,
  storeDir: string,
  o: WarmForTest = {},
): Promise<{ result: WarmResult; store: FsBlobStore }> {
  const store = await new FsBlobStore(storeDir, { fsync: false }).init();
  const credentials = new StaticCredentials();
  if (o.creds) credentials.set(o.creds.host, { username: o.creds.username, password: o.creds.password });
  const client = new RegistryClient({ credentials, retry: TEST_RETRY });
  const fetcher = new BlobFetcher(store, {
    chunkSize: 4 << 20,
    minChunkSize: 256 << 10,
    concurrencyPerBlob: 6,
    retry: TEST_RETRY,
    ...o.fetcher,
  });
  try {
    const result = await new ImageWarmer(client, fetcher, store).warm(parseReference(ref), {
      platform: o.platform ?? { os: 'linux', architecture: 'amd64' },
      ...(o.onProgress ? { onProgress: o.onProgress } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
    });
    return { result, store };
  } finally {
    await fetcher.close();
    await client.close();
  }
}

/** sha256 of a file, streamed. */
export async function hashFile(path: string): Promise<Digest> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

/** Asserts-by-throwing that every digest is committed in the store and hashes to its name. */
export async function assertStored(store: FsBlobStore, digests: string[]): Promise<void> {
  for (const d of digests) {
    const actual = await hashFile(store.blobPath(d as Digest));
    if (actual !== d) throw new Error(`store has ${d} hashing to ${actual}`);
  }
}
