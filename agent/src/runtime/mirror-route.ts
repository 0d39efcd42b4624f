import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isManaged } from './hosts-installer.js';
import { DEFAULT_NAMESPACE } from './hosts-toml.js';

export interface MirrorRouteOptions {
  /** containerd's registry `config_path` as this process sees it (read-only is enough). */
  configPath: string;
  /** Registries the hosts-toml container writes files for (`_default` = every other one). */
  registries: readonly string[];
  /** Longest wait for a registry's file. */
  timeoutMs: number;
  /** Between two looks. Default 250 ms. */
  pollMs?: number;
}

/**
 * `routed`: containerd pulls this registry through the node mirror; `unmanaged`: no
 * hosts.toml is written for it (containerd goes to the registry, nothing to wait for);
 * `timeout`: it is managed but the file was not in place within the wait.
 */
export type RouteOutcome = 'routed' | 'unmanaged' | 'timeout';

export interface RouteResult {
  outcome: RouteOutcome;
  /** The hosts.toml looked at (absent for `unmanaged`). */
  file?: string;
  waitedMs: number;
}

/**
 * Whether containerd pulls a registry through the node mirror, as containerd decides it:
 * the registry's own `hosts.toml` under `config_path`, else `_default/hosts.toml`. The
 * hosts-toml container writes those files only once the mirror answers (and takes them away
 * while it does not), so a pod's agent can be running jobs before containerd is pointed at
 * it. A CRI pull made then goes straight to the registry and fetches the image a second
 * time; `wait` holds an unpack until the file is kube-prewarm's.
 */
export class MirrorRoute {
  readonly #opts: MirrorRouteOptions;

  constructor(opts: MirrorRouteOptions) {
    this.#opts = opts;
  }

  /** The file containerd reads for `registry`, undefined when none is written for it. */
  fileFor(registry: string): string | undefined {
    const { registries, configPath } = this.#opts;
    const ns = registries.includes(registry)
      ? registry
      : registries.includes(DEFAULT_NAMESPACE)
        ? DEFAULT_NAMESPACE
        : undefined;
    return ns === undefined ? undefined : join(configPath, ns, 'hosts.toml');
  }

  /** Resolves once `registry` is routed through the mirror, or unmanaged, or after the timeout. Rejects only on abort. */
  async wait(registry: string, signal?: AbortSignal): Promise<RouteResult> {
    const started = Date.now();
    const file = this.fileFor(registry);
    if (file === undefined) return { outcome: 'unmanaged', waitedMs: 0 };
    // A registry covered by `_default` that has a file of its own (the administrator's):
    // containerd reads that one, which is not ours to wait for.
    const own = join(this.#opts.configPath, registry, 'hosts.toml');
    if (own !== file && (await readFile(own, 'utf8').catch(() => undefined)) !== undefined)
      return { outcome: 'unmanaged', waitedMs: 0 };
    for (;;) {
      signal?.throwIfAborted();
      const text = await readFile(file, 'utf8').catch(() => undefined);
      const waitedMs = Date.now() - started;
      if (text !== undefined && isManaged(text)) return { outcome: 'routed', file, waitedMs };
      if (waitedMs >= this.#opts.timeoutMs) return { outcome: 'timeout', file, waitedMs };
      // An abort ends the wait with its reason (the job's cancellation), not timers' AbortError.
      await sleep(this.#opts.pollMs ?? 250, undefined, signal ? { signal } : {}).catch((err: unknown) => {
        signal?.throwIfAborted();
        throw err;
      });
    }
  }
}
