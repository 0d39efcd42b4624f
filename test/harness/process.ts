/**
 * Long-running child processes for integration tests (registry, redis, containerd, ...).
 *
 * Contract: output (stdout+stderr) goes to a log file, never to the test's own output;
 * readiness is polled (TCP port or HTTP URL) with a timeout whose error carries the tail of
 * that log; `stop()` is SIGTERM then SIGKILL after a grace period; nothing outlives the test
 * process: children are SIGKILLed from an exit/signal hook (`onProcessExit`), and on Linux each child is also
 * started under `setpriv --pdeathsig KILL`, so even a SIGKILLed test process takes its
 * children with it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { onProcessExit } from './tmp.js';

/** How a child ended: exactly one of `code` / `signal` is non-null. */
export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnOptions {
  /** Short name used in error messages, e.g. `registry`. */
  name: string;
  /** Executable (looked up in PATH). */
  command: string;
  args: readonly string[];
  /** File that receives the child's stdout and stderr (appended, created if missing). */
  logPath: string;
  /** Environment. Default: this process's environment. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** Default time `stop()` waits after SIGTERM before sending SIGKILL. */
export const DEFAULT_STOP_GRACE_MS = 5_000;

/*
 * Process-wide on purpose: the exit and signal hooks must reach every child this test
 * process started, whichever test started it.
 */
const liveChildren = new Set<ChildProcess>();
let hooksInstalled = false;

function killAllNow(): void {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {
      // Already gone; nothing to do at exit.
    }
  }
  liveChildren.clear();
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  onProcessExit(killAllNow);
}

// setpriv is util-linux; where it is missing we still have the exit hooks.
const SETPRIV = '/usr/bin/setpriv';
const HAVE_SETPRIV = process.platform === 'linux' && existsSync(SETPRIV);

/** A child process started by `spawnProcess`. */
export class ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly logPath: string;
  /** Settles once when the child exits (never rejects). */
  readonly exited: Promise<ExitStatus>;
  #status: ExitStatus | undefined;
  readonly #child: ChildProcess;

  /** Use `spawnProcess`. */
  constructor(name: string, child: ChildProcess, logPath: string) {
    if (child.pid === undefined) throw new Error(`${name}: child has no pid`);
    this.name = name;
    this.pid = child.pid;
    this.logPath = logPath;
    this.#child = child;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        liveChildren.delete(child);
        this.#status = { code, signal };
        resolve(this.#status);
      });
    });
  }

  /** True until the child has exited. */
  get running(): boolean {
    return this.#status === undefined;
  }

  /** The exit status, once exited. */
  get exitStatus(): ExitStatus | undefined {
    return this.#status;
  }

  /**
   * SIGTERM, then SIGKILL if still running after `graceMs`. Resolves with the exit status
   * once the child is gone; on an already-exited child, resolves at once.
   */
  async stop(graceMs: number = DEFAULT_STOP_GRACE_MS): Promise<ExitStatus> {
    if (this.#status) return this.#status;
    this.#child.kill('SIGTERM');
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGKILL (kill -9), no grace: simulates a crash. Resolves once the child is gone. */
  async kill(): Promise<ExitStatus> {
    if (this.#status) return this.#status;
    this.#child.kill('SIGKILL');
    return this.exited;
  }

  /** The last `maxLines` lines of the log (reads at most the last 64 KiB). */
  logTail(maxLines = 40): string {
    return readLogTail(this.logPath, maxLines);
  }
}

/** The last `maxLines` lines of a log file, or a note when it cannot be read. */
export function readLogTail(path: string, maxLines = 40): string {
  try {
    const size = statSync(path).size;
    const len = Math.min(size, 64 * 1024);
    const buf = Buffer.alloc(len);
    const fd = openSync(path, 'r');
    try {
      readSync(fd, buf, 0, len, size - len);
    } finally {
      closeSync(fd);
    }
    const lines = buf.toString('utf8').split('\n');
    if (lines.at(-1) === '') lines.pop();
    return lines.slice(-maxLines).join('\n');
  } catch (err) {
    return `<cannot read ${path}: ${(err as Error).message}>`;
  }
}

/**
 * Starts `command args` with stdin closed and stdout+stderr appended to `logPath`.
 * Resolves once the OS has started it; rejects when it cannot be started (ENOENT, EACCES).
 * The child is killed at the latest when this process exits.
 */
export async function spawnProcess(opts: SpawnOptions): Promise<ManagedProcess> {
  installHooks();
  const fd = openSync(opts.logPath, 'a');
  let child: ChildProcess;
  try {
    const [cmd, args] = HAVE_SETPRIV
      ? [SETPRIV, ['--pdeathsig', 'KILL', '--', opts.command, ...opts.args]]
      : [opts.command, [...opts.args]];
    child = spawn(cmd, args, {
      stdio: ['ignore', fd, fd],
      env: opts.env ?? process.env,
      ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }),
    });
  } finally {
    // The child has its own copy of the descriptor.
    closeSync(fd);
  }
  liveChildren.add(child);
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (err) => {
      liveChildren.delete(child);
      reject(new Error(`${opts.name}: cannot start ${opts.command}: ${err.message}`, { cause: err }));
    });
  });
  return new ManagedProcess(opts.name, child, opts.logPath);
}

export interface WaitOptions {
  /** Give up after this long. Default 20 s (a loaded 2-core CI machine is slow to start Go binaries). */
  timeoutMs?: number;
  /** Pause between probes. Default 50 ms. */
  intervalMs?: number;
  /** When given, fail at once if it exits, and put its log tail in the error. */
  process?: ManagedProcess;
}

/**
 * Calls `probe` until it returns true. Rejects when `timeoutMs` passes or `opts.process`
 * exits first; the error names `what`, the probe's last error and the process's log tail.
 */
export async function waitUntil(
  what: string,
  probe: () => Promise<boolean>,
  opts: WaitOptions = {},
): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const intervalMs = opts.intervalMs ?? 50;
  const deadline = Date.now() + timeoutMs;
  const proc = opts.process;
  let lastError = 'none';
  const fail = (why: string): Error => {
    const tail = proc ? `\n--- last lines of ${proc.logPath} ---\n${proc.logTail()}\n---` : '';
    return new Error(
      `${proc ? `${proc.name}: ` : ''}${why} (waiting for ${what}; last probe error: ${lastError})${tail}`,
    );
  };
  for (;;) {
    if (proc && !proc.running) {
      const s = proc.exitStatus!;
      throw fail(`exited (${s.signal ?? `code ${s.code}`}) before it was ready`);
    }
    try {
      if (await probe()) return;
      lastError = 'probe returned false';
    } catch (err) {
      lastError = (err as Error).message;
    }
    if (Date.now() >= deadline) throw fail(`not ready after ${timeoutMs} ms`);
    await sleep(intervalMs);
  }
}

/** Resolves when a TCP connection to host:port succeeds once. See `waitUntil` for errors. */
export function waitForPort(host: string, port: number, opts: WaitOptions = {}): Promise<void> {
  return waitUntil(`tcp ${host}:${port}`, () => tcpProbe(host, port), opts);
}

/**
 * Resolves when `GET url` answers a status that `ready` accepts (default: any status below
 * 500, so a 401 from an auth-protected endpoint counts as up). See `waitUntil` for errors.
 */
export function waitForHttp(
  url: string,
  opts: WaitOptions & { ready?: (status: number) => boolean } = {},
): Promise<void> {
  const ready = opts.ready ?? ((s: number) => s < 500);
  return waitUntil(
    `GET ${url}`,
    async () => {
      const res = await fetch(url, { redirect: 'manual', signal: AbortSignal.timeout(2_000) });
      await res.body?.cancel();
      if (!ready(res.status)) throw new Error(`status ${res.status}`);
      return true;
    },
    opts,
  );
}

function tcpProbe(host: string, port: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port });
    sock.setTimeout(2_000, () => sock.destroy(new Error('connect timeout')));
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', reject);
  });
}
