/**
 * The setup every benchmark that pushes one big image does alike: common flags, tool
 * checks, the shaped link's preconditions, the temp dir, the image pushed to a loopback
 * registry (and served again from the registry namespace), the results file, and the
 * entry point that always runs the cleanup.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { type BigImage, buildBigImage } from './big-image.js';
import { Cleanup } from './cleanup.js';
import type { ShapedLink } from './netns.js';
import { type BenchRegistry, freeLoopbackPort, startBenchRegistry } from './registry.js';

const execFileP = promisify(execFile);
const OUT_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'out');

/** Flags every such benchmark takes; spread into its `parseArgs` options. */
export const COMMON_OPTIONS = {
  /** Payload of the single layer, in MiB. */
  'size-mib': { type: 'string', default: '1024' },
  /** Keep the temp dir (logs) instead of removing it. */
  keep: { type: 'boolean', default: false },
} as const;

/** `--size-mib` as a number; throws unless it is > 0. */
export function parseSizeMiB(value: string): number {
  const sizeMiB = Number(value);
  if (!(sizeMiB > 0)) throw new Error('--size-mib must be > 0');
  return sizeMiB;
}

/** A `console.error` logger whose lines start with `[bench/<name>]`. */
export function benchLogger(name: string): (msg: string) => void {
  return (msg) => console.error(`[bench/${name}] ${msg}`);
}

/** True when `cmd` is on PATH (or is an executable path). */
export function haveCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Throws `<cmd> not found<hint>` for the first of `cmds` that is missing. */
export function requireCommands(cmds: readonly string[], hint = ''): void {
  for (const cmd of cmds) if (!haveCommand(cmd)) throw new Error(`${cmd} not found${hint}`);
}

/**
 * Throws unless a shaped link can be set up: root is needed for network namespaces, and
 * the link's namespaces must not exist yet (another run, or left over).
 */
export function assertLinkAvailable(link: ShapedLink): void {
  if (process.getuid?.() !== 0) throw new Error('shaped profiles (P1, P2) need root (network namespaces)');
  if (link.exists()) {
    throw new Error(
      `network namespace ${link.regNs} or ${link.cliNs} already exists (another run, or left over): ` +
        'remove it with scripts/netns-down.sh',
    );
  }
}

/**
 * A fresh `<os tmpdir>/<prefix>XXXXXX` whose removal is registered in `cleanup`; with
 * `keep`, the cleanup logs its path instead of removing it.
 */
export function benchTempDir(
  cleanup: Cleanup,
  prefix: string,
  keep: boolean,
  log: (msg: string) => void,
): string {
  const tmp = mkdtempSync(join(tmpdir(), prefix));
  cleanup.add(`remove ${tmp}`, () => {
    if (keep) log(`kept ${tmp}`);
    else rmSync(tmp, { recursive: true, force: true });
  });
  return tmp;
}

export interface PushedImageOptions {
  /** Temp dir for the layout, the registry's config, log and storage. */
  tmp: string;
  sizeMiB: number;
  repository: string;
  tag: string;
  log: (msg: string) => void;
}

export interface PushedImage {
  image: BigImage;
  /** The registry's storage dir, to serve it again from elsewhere (`startLinkRegistry`). */
  storage: string;
  /** The loopback registry the image was pushed to (still running). */
  registry: BenchRegistry;
}

/**
 * Builds a single-layer image of `sizeMiB` random MiB as an OCI layout, starts a registry
 * on 127.0.0.1, pushes the image there with its digests kept, and removes the layout.
 */
export async function pushBigImage(cleanup: Cleanup, opts: PushedImageOptions): Promise<PushedImage> {
  opts.log(`building a ${opts.sizeMiB} MiB single-layer image`);
  const image = await buildBigImage(join(opts.tmp, 'layout'), opts.sizeMiB * 2 ** 20);
  const storage = join(opts.tmp, 'storage');
  const registry = await startBenchRegistry(cleanup, {
    dir: opts.tmp,
    storageDir: storage,
    addr: `127.0.0.1:${await freeLoopbackPort()}`,
    name: 'registry-loopback',
  });
  opts.log(`pushing ${image.layerDigest} (${image.layerSize} bytes) to ${registry.host}`);
  await execFileP('skopeo', [
    'copy',
    '--preserve-digests',
    '--dest-tls-verify=false',
    `oci:${image.layoutDir}:${image.tag}`,
    `docker://${registry.host}/${opts.repository}:${opts.tag}`,
  ]);
  rmSync(image.layoutDir, { recursive: true, force: true });
  return { image, storage, registry };
}

/** A second registry on the same storage, served from inside the link's registry namespace. */
export function startLinkRegistry(
  cleanup: Cleanup,
  tmp: string,
  storage: string,
  link: ShapedLink,
): Promise<BenchRegistry> {
  return startBenchRegistry(cleanup, {
    dir: tmp,
    storageDir: storage,
    addr: `${link.regIp}:5000`,
    ns: link.regNs,
    name: 'registry-netns',
  });
}

/** Writes `data` as JSON to `bench/out/<name>-<timestamp>.json`; returns the path. */
export function writeResults(name: string, data: unknown): string {
  mkdirSync(OUT_DIR, { recursive: true });
  const file = join(OUT_DIR, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(data, null, 2)}\n`);
  return file;
}

/**
 * Runs a benchmark's `main` with a `Cleanup` that also runs on SIGINT/SIGTERM/SIGHUP, and
 * explicitly once `main` settles (a live daemon would keep the process from exiting). A
 * failure is printed with the `[bench/<name>]` prefix and sets exit status 1.
 */
export async function runBench(name: string, main: (cleanup: Cleanup) => Promise<void>): Promise<void> {
  const cleanup = new Cleanup();
  cleanup.installSignalHandlers();
  try {
    await main(cleanup);
  } catch (err) {
    console.error(`[bench/${name}] failed: ${(err as Error)?.stack ?? err}`);
    process.exitCode = 1;
  } finally {
    cleanup.run();
  }
}
