import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { classifyFsError } from '../../../oci/src/errors.js';
import { fsyncDir } from '../store/fs-store.js';
import { assertNamespace, type HostsEntry, MANAGED_MARKER, renderHostsToml } from './hosts-toml.js';

/** Where a foreign hosts.toml is kept while ours is installed, and restored from on uninstall. */
export const BACKUP_NAME = 'hosts.toml.kube-prewarm-orig';

export interface HostsInstallerOptions {
  /** containerd's registry `config_path`. Default `/etc/containerd/certs.d`. */
  configPath?: string;
  /** fsync files and directories. Default true; tests on throwaway dirs may turn it off. */
  fsync?: boolean;
}

export type InstallOutcome = 'written' | 'unchanged' | 'replaced-foreign';
export type UninstallOutcome = 'removed' | 'restored' | 'not-ours' | 'absent';

/**
 * Installs and removes kube-prewarm's hosts.toml files under containerd's `config_path`.
 * Every write is atomic (temp file in the same directory, fsync, rename), so containerd,
 * which re-reads hosts.toml on each pull, never sees a torn file. A hosts.toml we did not
 * write is moved aside to `hosts.toml.kube-prewarm-orig` and put back on uninstall; files we
 * did write carry `MANAGED_MARKER` on their first line, and only those are ever removed.
 */
export class HostsTomlInstaller {
  readonly configPath: string;
  readonly #fsync: boolean;

  constructor(opts: HostsInstallerOptions = {}) {
    this.configPath = opts.configPath ?? '/etc/containerd/certs.d';
    this.#fsync = opts.fsync ?? true;
  }

  /** The hosts.toml path of a registry namespace (validated: no path tricks). */
  pathFor(registry: string): string {
    return join(this.configPath, assertNamespace(registry), 'hosts.toml');
  }

  /**
   * Writes one hosts.toml per entry. Returns what happened per registry. Throws
   * PW_ERR_INVALID_CONFIG (bad entry), PW_ERR_DISK_FULL, or the filesystem error.
   */
  async install(entries: readonly HostsEntry[]): Promise<Map<string, InstallOutcome>> {
    const rendered = entries.map((e) => [e.registry, renderHostsToml(e)] as const);
    const out = new Map<string, InstallOutcome>();
    for (const [registry, text] of rendered) {
      const dir = join(this.configPath, registry);
      const file = join(dir, 'hosts.toml');
      try {
        await mkdir(dir, { recursive: true });
        const current = await readFile(file, 'utf8').catch(() => undefined);
        if (current === text) {
          out.set(registry, 'unchanged');
          continue;
        }
        let outcome: InstallOutcome = 'written';
        if (current !== undefined && !isManaged(current)) {
          // Keep the operator's own file; a backup from an earlier install is never overwritten.
          const backup = join(dir, BACKUP_NAME);
          if ((await readFile(backup).catch(() => undefined)) === undefined) await rename(file, backup);
          outcome = 'replaced-foreign';
        }
        await this.#writeAtomic(dir, file, text);
        out.set(registry, outcome);
      } catch (err) {
        throw classifyFsError(err, `installing ${file}`);
      }
    }
    return out;
  }

  /**
   * Removes our hosts.toml for each registry (default: every one we manage), restoring a
   * moved-aside original, and the directory if it is left empty. Files we did not write
   * are left alone (`not-ours`).
   */
  async uninstall(registries?: readonly string[]): Promise<Map<string, UninstallOutcome>> {
    const names = registries ?? (await this.listManaged());
    const out = new Map<string, UninstallOutcome>();
    for (const registry of names) {
      const file = this.pathFor(registry);
      const dir = join(this.configPath, registry);
      try {
        const current = await readFile(file, 'utf8').catch(() => undefined);
        if (current === undefined) {
          out.set(registry, 'absent');
          continue;
        }
        if (!isManaged(current)) {
          out.set(registry, 'not-ours');
          continue;
        }
        const backup = join(dir, BACKUP_NAME);
        if ((await readFile(backup).catch(() => undefined)) !== undefined) {
          await rename(backup, file);
          out.set(registry, 'restored');
        } else {
          await rm(file, { force: true });
          await rmdir(dir).catch(() => undefined);
          out.set(registry, 'removed');
        }
        if (this.#fsync) await fsyncDir(this.configPath).catch(() => undefined);
      } catch (err) {
        throw classifyFsError(err, `uninstalling ${file}`);
      }
    }
    return out;
  }

  /** Registry namespaces whose hosts.toml we wrote. */
  async listManaged(): Promise<string[]> {
    const out: string[] = [];
    for (const name of await readdir(this.configPath).catch(() => [] as string[])) {
      let valid = true;
      try {
        assertNamespace(name);
      } catch {
        valid = false;
      }
      if (!valid) continue;
      const text = await readFile(join(this.configPath, name, 'hosts.toml'), 'utf8').catch(() => undefined);
      if (text !== undefined && isManaged(text)) out.push(name);
    }
    return out.sort();
  }

  /**
   * Not the store's `writeAtomic`: the temp file here is a dot-file beside the target, created
   * with mode 0644 instead of `open`'s default 0666, so that a permissive umask (0, 002) never
   * makes containerd's registry config group- or world-writable.
   */
  async #writeAtomic(dir: string, file: string, text: string): Promise<void> {
    const tmp = join(dir, `.hosts.toml.${randomBytes(6).toString('hex')}.tmp`);
    const fh = await open(tmp, 'w', 0o644);
    try {
      await fh.writeFile(text);
      if (this.#fsync) await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    if (this.#fsync) await fsyncDir(dir);
  }
}

export function isManaged(text: string): boolean {
  return text.startsWith(`${MANAGED_MARKER}\n`);
}
