/**
 * Runs `fn` over `items` with at most `limit` calls in flight, in order of `items`;
 * rejects with the first error (calls already started run on). Shared by the operator
 * (job mutations), the agent (blobs of an image, eStargz probes) and the benchmarks.
 */
export async function eachLimited<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, limit), items.length) }, worker));
}
