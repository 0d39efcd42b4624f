import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import { isValidRegistryHost, registryEndpointHost } from '../../../oci/src/reference.js';

/** First line of every hosts.toml we write: how the installer recognises its own files. */
export const MANAGED_MARKER = '# kube-prewarm-managed: v1';

/** containerd's catch-all host namespace: applies to registries without a directory of their own. */
export const DEFAULT_NAMESPACE = '_default';

/** One registry's hosts.toml: the node mirror(s) first, the upstream as `server`. */
export interface HostsEntry {
  /** Registry host namespace as in image references (`docker.io`, `ghcr.io`, `127.0.0.1:5000`) or `_default`. */
  registry: string;
  /**
   * The upstream (`server`), where containerd goes when every mirror fails. Default
   * `https://<registry>` (`https://registry-1.docker.io` for docker.io). Not written for
   * `_default`: containerd then falls back to the host being pulled from.
   */
  server?: string;
  /** Mirror base URLs in preference order, e.g. `http://127.0.0.1:5055`. At least one. */
  mirrors: string[];
  /** Capabilities of the mirror hosts. Default `pull` and `resolve` (tags resolve through the mirror). */
  capabilities?: ('pull' | 'resolve')[];
  /** `skip_verify` for https mirrors with self-signed certificates. Default unset. */
  skipVerify?: boolean;
}

/** Throws PW_ERR_INVALID_CONFIG unless `registry` is a host[:port] or `_default` (also: no path tricks). */
export function assertNamespace(registry: string): string {
  if (registry !== DEFAULT_NAMESPACE && !isValidRegistryHost(registry)) {
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `invalid registry host ${JSON.stringify(registry)}`);
  }
  return registry;
}

function assertUrl(u: string, what: string): string {
  let parsed: URL;
  try {
    parsed = new URL(u);
  } catch {
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `${what}: invalid URL ${JSON.stringify(u)}`);
  }
  if ((parsed.protocol !== 'http:' && parsed.protocol !== 'https:') || parsed.search || parsed.hash) {
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `${what}: want http(s)://host[:port][/path], got ${u}`);
  }
  return u.replace(/\/+$/, '');
}

/** A TOML basic string (JSON's escaping is valid TOML for these values). */
function str(s: string): string {
  return JSON.stringify(s);
}

/**
 * Renders the hosts.toml for one registry. Pure: same entry, same bytes (so the installer
 * can skip rewriting an identical file). Throws PW_ERR_INVALID_CONFIG for bad hosts/URLs.
 */
export function renderHostsToml(entry: HostsEntry): string {
  const ns = assertNamespace(entry.registry);
  if (entry.mirrors.length === 0)
    throw new PrewarmError(ErrorCodes.INVALID_CONFIG, `hosts.toml for ${ns}: no mirror URL`);
  const caps = entry.capabilities ?? ['pull', 'resolve'];
  const lines = [
    MANAGED_MARKER,
    '# Written by the kube-prewarm agent; removed (and any previous file restored) on uninstall.',
    '# containerd tries each [host] in order, then `server`.',
  ];
  if (ns !== DEFAULT_NAMESPACE) {
    const server = assertUrl(entry.server ?? `https://${registryEndpointHost(ns)}`, 'server');
    lines.push(`server = ${str(server)}`);
  }
  for (const m of entry.mirrors) {
    lines.push('', `[host.${str(assertUrl(m, 'mirror'))}]`, `  capabilities = [${caps.map(str).join(', ')}]`);
    if (entry.skipVerify) lines.push('  skip_verify = true');
  }
  return `${lines.join('\n')}\n`;
}
