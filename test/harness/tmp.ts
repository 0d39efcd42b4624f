/**
 * Temp dirs, free ports and teardown for integration tests.
 *
 * Every real component a test starts gets its own temp dir and a port picked here, on
 * 127.0.0.1 only. Teardown is explicit (`Cleanup.run()` in an `after` hook); as a safety
 * net, temp dirs not yet removed when the test process exits are removed synchronously
 * by an exit hook, so a crashed test does not leave gigabytes behind in /tmp.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';

/** Teardown function registered with a `Cleanup`. */
export type CleanupFn = () => void | Promise<void>;

/**
 * A stack of teardown functions, run last-registered-first (so a server registered after
 * the dir it lives in is stopped before the dir is removed). One per test file or suite:
 *
 * ```ts
 * const cleanup = new Cleanup();
 * after(() => cleanup.run());
 * const dir = await makeTempDir('store', cleanup);
 * ```
 */
export class Cleanup {
  readonly #fns: CleanupFn[] = [];

  /** Registers `fn` to run on `run()`. Returns `fn` for chaining. */
  defer<T extends CleanupFn>(fn: T): T {
    this.#fns.push(fn);
    return fn;
  }

  /**
   * Runs every registered function in reverse order, each exactly once, even when some
   * fail; then throws an AggregateError of the failures, if any. Safe to call twice.
   */
  async run(): Promise<void> {
    const errors: unknown[] = [];
    for (let fn = this.#fns.pop(); fn !== undefined; fn = this.#fns.pop()) {
      try {
        await fn();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0)
      throw new AggregateError(errors, `cleanup: ${errors.length} teardown step(s) failed`);
  }
}

/*
 * Process-wide on purpose: the exit hook must see every temp dir and child process this
 * test process created, whichever test created it. Nothing else reads these.
 */
const liveTempDirs = new Set<string>();
const exitHooks: (() => void)[] = [];
let exitHookInstalled = false;

/**
 * Registers a synchronous function to run when this process exits: normally, on an
 * uncaught exception, or on SIGINT/SIGTERM/SIGHUP (which are turned into `process.exit(128+n)`
 * so the hooks run, unless another listener for that signal exists). Nothing runs on SIGKILL:
 * `spawnProcess` covers that case for children with a parent-death signal.
 */
export function onProcessExit(fn: () => void): void {
  exitHooks.push(fn);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const hook of exitHooks) {
      try {
        hook();
      } catch {
        // Best effort at exit: nothing useful can be done with the error here.
      }
    }
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      process.removeListener(sig, onSignal);
      if (process.listenerCount(sig) === 0) process.exit(128 + constants.signals[sig]);
    };
    process.on(sig, onSignal);
  }
}

let tempDirHookInstalled = false;

function installExitHook(): void {
  if (tempDirHookInstalled) return;
  tempDirHookInstalled = true;
  onProcessExit(() => {
    for (const dir of liveTempDirs) rmSync(dir, { recursive: true, force: true });
  });
}

function tempPrefix(prefix: string): string {
  if (!/^[A-Za-z0-9._-]{1,40}$/.test(prefix))
    throw new Error(`makeTempDir: bad prefix ${JSON.stringify(prefix)}`);
  sweepStaleTempDirs();
  return join(tmpdir(), `kube-prewarm-${prefix}-p${process.pid}-`);
}

const TEMP_DIR_RE = /^kube-prewarm-[A-Za-z0-9._-]+-p(\d+)-[A-Za-z0-9]{6}$/;
let swept = false;

/**
 * Once per process: removes temp dirs left by test processes that no longer exist (a test
 * process killed with SIGKILL cannot clean up). The creator's pid is part of each name.
 */
function sweepStaleTempDirs(): void {
  if (swept) return;
  swept = true;
  let names: string[];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const name of names) {
    const pid = Number(TEMP_DIR_RE.exec(name)?.[1]);
    if (!pid || pid === process.pid || pidAlive(pid)) continue;
    try {
      rmSync(join(tmpdir(), name), { recursive: true, force: true });
    } catch {
      // Already gone, or not removable by us: not ours to worry about.
    }
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: alive but owned by someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Creates a fresh directory `<os tmpdir>/kube-prewarm-<prefix>-p<pid>-XXXXXX` and returns its path.
 * With `cleanup`, its recursive removal is registered there; in any case it is removed at
 * process exit if still present. `prefix` must be `[A-Za-z0-9._-]{1,40}`.
 */
export async function makeTempDir(prefix: string, cleanup?: Cleanup): Promise<string> {
  installExitHook();
  const dir = await mkdtemp(tempPrefix(prefix));
  liveTempDirs.add(dir);
  cleanup?.defer(() => removeTempDir(dir));
  return dir;
}

/** Synchronous twin of `makeTempDir` for places that cannot await (same contract). */
export function makeTempDirSync(prefix: string, cleanup?: Cleanup): string {
  installExitHook();
  const dir = mkdtempSync(tempPrefix(prefix));
  liveTempDirs.add(dir);
  cleanup?.defer(() => removeTempDir(dir));
  return dir;
}

/** Removes a dir made by `makeTempDir` (recursively; a missing dir is fine). */
export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  liveTempDirs.delete(dir);
}

/**
 * A TCP port that was free on 127.0.0.1 a moment ago: binds port 0, reads the port the
 * kernel chose, closes. Another process could take it before the caller binds it; on
 * loopback in a test run that race is rare enough, and the caller's readiness check
 * fails loudly (with the child's log) when it happens.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const addr = server.address();
      if (addr === null || typeof addr === 'string') {
        server.close();
        reject(new Error('freePort: listener has no TCP address'));
        return;
      }
      server.close((err) => (err ? reject(err) : resolve(addr.port)));
    });
  });
}
