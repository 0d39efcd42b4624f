/**
 * The real registry most agent tests start before their cases, registered with the test
 * file's `Cleanup`, so that `cleanup.run()` stops it (last started, first stopped). Redis
 * for the daemon tests is in daemon-fixtures.ts (`startTestRedis`).
 */
import {
  type Cleanup,
  type FaultProxyHandle,
  type RegistryHandle,
  type RegistryOptions,
  startFaultProxy,
  startRegistry,
} from '../harness/index.js';

/** A real registry (Debian `docker-registry`), closed by `cleanup`. */
export async function startTestRegistry(
  cleanup: Cleanup,
  opts: RegistryOptions = {},
): Promise<RegistryHandle> {
  const registry = await startRegistry(opts);
  cleanup.defer(() => registry.close());
  return registry;
}

/**
 * A real registry with a fault proxy in front (byte counts, request log, injected faults):
 * tests point clients at `proxy`, and read what crossed it. Both stopped by `cleanup`.
 */
export async function startProxiedRegistry(
  cleanup: Cleanup,
  opts: RegistryOptions = {},
): Promise<{ registry: RegistryHandle; proxy: FaultProxyHandle }> {
  const registry = await startTestRegistry(cleanup, opts);
  const proxy = await startFaultProxy({ upstream: registry });
  cleanup.defer(() => proxy.stop());
  return { registry, proxy };
}
