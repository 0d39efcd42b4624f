import { readFile } from 'node:fs/promises';
import type { CriVersion } from './cri-image-service.js';

export interface ContainerdVersion {
  major: number;
  minor: number;
  patch: number;
}

/** Parses `1.6.20~ds1`, `v2.1.4`, `2.1.0-rc.1`, `1.7.27-1`; undefined when it is none of these. */
export function parseContainerdVersion(v: string): ContainerdVersion | undefined {
  const m = /^v?(\d+)\.(\d+)(?:\.(\d+))?/.exec(v.trim());
  if (!m) return undefined;
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3] ?? 0) };
}

/**
 * Value of a key in a TOML document, by full dotted path with quotes removed
 * (`['plugins', 'io.containerd.cri.v1.images', 'use_local_image_pull']`). A deliberately small
 * scanner for containerd configs: `[table]` headers (either quote style, any spacing),
 * `key = value` lines (dotted keys too), comments. Arrays of tables, inline tables and
 * multi-line values are skipped. Returns the raw value text (`true`, `"path"`), or undefined.
 */
export function tomlLookup(text: string, path: readonly string[]): string | undefined {
  const want = path.join('\u0000');
  let table: string[] = [];
  let found: string | undefined;
  for (const raw of text.split('\n')) {
    const line = stripComment(raw).trim();
    if (line === '') continue;
    if (line.startsWith('[[')) {
      table = ['\u0001array'];
      continue;
    }
    if (line.startsWith('[')) {
      const end = line.lastIndexOf(']');
      table = end > 0 ? splitKey(line.slice(1, end)) : ['\u0001bad'];
      continue;
    }
    const eq = indexOutsideQuotes(line, '=');
    if (eq < 0) continue;
    const key = [...table, ...splitKey(line.slice(0, eq))];
    if (key.join('\u0000') === want) found = line.slice(eq + 1).trim();
  }
  return found;
}

function stripComment(line: string): string {
  const i = indexOutsideQuotes(line, '#');
  return i < 0 ? line : line.slice(0, i);
}

function indexOutsideQuotes(s: string, ch: string): number {
  let quote: string | undefined;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) quote = undefined;
    } else if (c === '"' || c === "'") quote = c;
    else if (c === ch) return i;
  }
  return -1;
}

/** `plugins."io.containerd.cri.v1.images" . registry` → [plugins, io.containerd.cri.v1.images, registry]. */
function splitKey(s: string): string[] {
  const parts: string[] = [];
  let rest = s.trim();
  while (rest.length > 0) {
    let part: string;
    if (rest[0] === '"' || rest[0] === "'") {
      const q = rest[0];
      const end = rest.indexOf(q, 1);
      if (end < 0) return ['\u0001bad'];
      part = rest.slice(1, end);
      rest = rest.slice(end + 1).trim();
    } else {
      const dot = rest.indexOf('.');
      part = (dot < 0 ? rest : rest.slice(0, dot)).trim();
      rest = dot < 0 ? '' : rest.slice(dot);
    }
    parts.push(part);
    rest = rest.trim();
    if (rest.startsWith('.')) rest = rest.slice(1).trim();
  }
  return parts;
}

function unquote(v: string | undefined): string | undefined {
  if (v === undefined) return undefined;
  const m = /^"(.*)"$|^'(.*)'$/.exec(v);
  return m ? (m[1] ?? m[2]) : v;
}

/** What the start-up check found out about containerd and hosts.toml. */
export interface ContainerdCheck {
  /**
   * `ok`: CRI pulls read our hosts.toml; `caveat`: they may not (see `problems`);
   * `unknown`: not containerd, or its config could not be read.
   */
  status: 'ok' | 'caveat' | 'unknown';
  runtimeName: string;
  runtimeVersion: string;
  /**
   * True when CRI image pulls go through containerd's transfer service (containerd ≥ 2.1
   * without `use_local_image_pull = true`); undefined when that could not be told.
   */
  transferService: boolean | undefined;
  /** The CRI `registry.config_path` from the config file, when found. */
  criConfigPath: string | undefined;
  /** One line per problem, each with its fix. */
  problems: string[];
}

export interface CheckOptions {
  /** containerd's config file text (read it with `readContainerdConfig`); undefined = not available. */
  configText?: string | undefined;
  /** Where our hosts.toml files go; compared with the config's `config_path`. */
  hostsDir?: string;
}

/**
 * The containerd ≥ 2.1 transfer-service caveat, checked from the runtime's CRI version and
 * (when given) its config file. containerd 2.1 routes CRI PullImage through the transfer
 * service unless `[plugins.'io.containerd.cri.v1.images'] use_local_image_pull = true`;
 * that path reads registry hosts configuration differently from CRI's
 * `registry.config_path` (a colon-separated list is not honoured, and mirror entries have
 * been reported ignored), so pulls can silently bypass the node mirror. Before 2.1 the CRI
 * plugin pulls itself and reads `registry.config_path`, which must then be set (1.x
 * defaults to none) and include `hostsDir`.
 */
export function checkContainerd(version: CriVersion, opts: CheckOptions = {}): ContainerdCheck {
  const base = {
    runtimeName: version.runtimeName,
    runtimeVersion: version.runtimeVersion,
  };
  if (version.runtimeName !== 'containerd') {
    return {
      ...base,
      status: 'unknown',
      transferService: undefined,
      criConfigPath: undefined,
      problems: [`runtime is ${version.runtimeName || 'unknown'}, not containerd: hosts.toml does not apply`],
    };
  }
  const v = parseContainerdVersion(version.runtimeVersion);
  const v2 = v !== undefined && v.major >= 2;
  const problems: string[] = [];
  const text = opts.configText;
  const imagesTable = v2
    ? ['plugins', 'io.containerd.cri.v1.images']
    : ['plugins', 'io.containerd.grpc.v1.cri'];
  const criConfigPath = text
    ? unquote(tomlLookup(text, [...imagesTable, 'registry', 'config_path']))
    : undefined;
  let transferService: boolean | undefined;
  if (v === undefined) transferService = undefined;
  else if (v.major < 2 || (v.major === 2 && v.minor < 1)) transferService = false;
  else if (text === undefined) transferService = undefined;
  else transferService = tomlLookup(text, [...imagesTable, 'use_local_image_pull']) !== 'true';

  if (transferService === true) {
    problems.push(
      `containerd ${version.runtimeVersion} pulls CRI images through the transfer service, which may bypass ` +
        `hosts.toml mirrors: set use_local_image_pull = true under [plugins.'io.containerd.cri.v1.images'] ` +
        '(see docs/mirror.md)',
    );
  }
  if (text !== undefined && opts.hostsDir !== undefined) {
    const dirs = (criConfigPath ?? '').split(':').filter(Boolean);
    if (!dirs.includes(opts.hostsDir.replace(/\/+$/, ''))) {
      problems.push(
        criConfigPath
          ? `CRI registry config_path is ${criConfigPath}, which does not include ${opts.hostsDir}: containerd will not read our hosts.toml`
          : `CRI registry config_path is not set: containerd will not read hosts.toml from ${opts.hostsDir}`,
      );
    }
  }
  const status =
    problems.length > 0
      ? 'caveat'
      : transferService === undefined || (text === undefined && opts.hostsDir !== undefined)
        ? 'unknown'
        : 'ok';
  return { ...base, status, transferService, criConfigPath, problems };
}

/** Reads containerd's config file; undefined when it does not exist or cannot be read. */
export async function readContainerdConfig(
  path = '/etc/containerd/config.toml',
): Promise<string | undefined> {
  return readFile(path, 'utf8').catch(() => undefined);
}
