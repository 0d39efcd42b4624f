/**
 * Child processes for benchmarks: long-running daemons (registry, containerd) and measured
 * one-shot clients, either in the host's network namespace or inside a named one
 * (`ip netns exec <ns> …`, which execs its command, so pids and process groups are the
 * command's own).
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Cleanup } from './cleanup.js';

/** argv prefix that runs a command inside network namespace `ns` (none: the host's). */
export function inNetns(ns: string | undefined, argv: readonly string[]): string[] {
  return ns === undefined ? [...argv] : ['ip', 'netns', 'exec', ns, ...argv];
}

export interface DaemonOptions {
  name: string;
  argv: readonly string[];
  /** Network namespace to run in; default the host's. */
  ns?: string | undefined;
  /** Receives stdout and stderr. */
  logPath: string;
  env?: NodeJS.ProcessEnv;
}

export interface Daemon {
  readonly name: string;
  readonly pid: number;
  readonly logPath: string;
  /** True once the process has exited. */
  exited(): boolean;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts a daemon under `setpriv --pdeathsig KILL`, so it dies with this process even if
 * this process is SIGKILLed, and registers a SIGKILL in `cleanup` for the normal path.
 */
export function startDaemon(cleanup: Cleanup, opts: DaemonOptions): Daemon {
  const fd = openSync(opts.logPath, 'a');
  const argv = inNetns(opts.ns, ['setpriv', '--pdeathsig', 'KILL', '--', ...opts.argv]);
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', fd, fd], env: opts.env ?? process.env });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`${opts.name}: spawn failed`);
  const pid = child.pid;
  let done = false;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', () => {
      done = true;
      resolve();
    });
    child.once('error', () => {
      done = true;
      resolve();
    });
  });
  const unregister = cleanup.add(`stop ${opts.name} (pid ${pid})`, () => {
    if (!done) child.kill('SIGKILL');
  });
  return {
    name: opts.name,
    pid,
    logPath: opts.logPath,
    exited: () => done,
    async stop(graceMs = 5000) {
      if (!done) {
        child.kill('SIGTERM');
        const killer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await exit;
        clearTimeout(killer);
      }
      unregister();
    },
  };
}

/** Last `n` lines of a log file, for error messages. */
export function logTail(path: string, n = 20): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Polls `probe` until it resolves true; throws with `describe()` after `timeoutMs`. */
export async function waitUntil(
  probe: () => Promise<boolean>,
  timeoutMs: number,
  describe: () => string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${describe()}`);
    await sleep(100);
  }
}

export interface MeasuredOptions {
  argv: readonly string[];
  ns?: string | undefined;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /**
   * Stop the command after this many seconds (SIGINT to its process group, SIGKILL 5 s
   * later). Default: no limit.
   */
  timeLimitS?: number | undefined;
  /**
   * Called right before the time-limit signal, while the command is still running, to
   * record how far it got (e.g. bytes on disk: a tool may delete its temp files on SIGINT).
   */
  onTimeLimit?: () => void;
  /** Scratch dir for the rusage file. */
  tmpDir: string;
}

export interface MeasuredResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when the time limit stopped the command. */
  timedOut: boolean;
  /** Wall seconds: the command's whole run, or up to the time-limit snapshot. */
  wallS: number;
  /** CPU seconds of the command and its children (getrusage via GNU time). */
  userS: number;
  sysS: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs one command under `/usr/bin/time` (in `ns` when given) and returns its exit status,
 * output, wall time and CPU time. GNU time ignores SIGINT while it waits, so a time-limit
 * SIGINT to the process group stops the command and time still reports its rusage.
 */
export async function runMeasured(cleanup: Cleanup, opts: MeasuredOptions): Promise<MeasuredResult> {
  const timeFile = join(opts.tmpDir, `rusage-${process.pid}-${Date.now()}.txt`);
  const argv = inNetns(opts.ns, ['/usr/bin/time', '-f', 'KPTIME %e %U %S', '-o', timeFile, ...opts.argv]);
  const started = process.hrtime.bigint();
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    // Own process group: the time-limit signal and the cleanup reach the whole command.
    detached: true,
  });
  if (child.pid === undefined) throw new Error(`spawn failed: ${argv.join(' ')}`);
  const pgid = child.pid;
  let running = true;
  const killGroup = (sig: NodeJS.Signals) => {
    if (!running) return;
    try {
      process.kill(-pgid, sig);
    } catch {
      // The group is already gone.
    }
  };
  const unregister = cleanup.add(`kill ${opts.argv[0]} (pgid ${pgid})`, () => killGroup('SIGKILL'));

  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stderr.on('data', (b: Buffer) => err.push(b));

  let timedOut = false;
  let snapshotWallS: number | undefined;
  const timers: NodeJS.Timeout[] = [];
  if (opts.timeLimitS !== undefined && opts.timeLimitS > 0) {
    timers.push(
      setTimeout(() => {
        timedOut = true;
        opts.onTimeLimit?.();
        snapshotWallS = Number(process.hrtime.bigint() - started) / 1e9;
        killGroup('SIGINT');
        timers.push(setTimeout(() => killGroup('SIGKILL'), 5000));
      }, opts.timeLimitS * 1000),
    );
  }

  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c, s) => resolve([c, s]));
  });
  running = false;
  for (const t of timers) clearTimeout(t);
  unregister();
  const ourWallS = Number(process.hrtime.bigint() - started) / 1e9;

  let wallS = snapshotWallS ?? ourWallS;
  let userS = Number.NaN;
  let sysS = Number.NaN;
  try {
    const line = readFileSync(timeFile, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('KPTIME '));
    if (line) {
      const [e, u, s] = line.slice('KPTIME '.length).split(' ').map(Number);
      if (snapshotWallS === undefined && e !== undefined) wallS = e;
      userS = u ?? Number.NaN;
      sysS = s ?? Number.NaN;
    }
  } finally {
    rmSync(timeFile, { force: true });
  }
  return {
    code,
    signal,
    timedOut,
    wallS,
    userS,
    sysS,
    stdout: Buffer.concat(out).toString('utf8'),
    stderr: Buffer.concat(err).toString('utf8'),
  };
}

/** user+sys CPU seconds a live process has used so far, from /proc/<pid>/stat. */
export function procCpuSeconds(pid: number, clockTicks = 100): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after "(comm) ".
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return (utime + stime) / clockTicks;
}
