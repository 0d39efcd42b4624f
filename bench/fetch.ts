/**
 * bench/fetch: how fast, and at what CPU cost, one large blob moves from a registry into a
 * local store, per client, over a shaped link (issue #6). Not a test: it prints numbers.
 *
 *   npm run bench -- fetch [options]          (or: node --import tsx bench/fetch.ts [options])
 *
 * Options:
 *   --size-mib <n>          payload of the single layer (default 1024: a >= 1 GiB blob)
 *   --profiles <list>       loopback,P1,P2 (default all three)
 *   --methods <list>        undici,skopeo,ctr,fetcher,floor (default all; floor runs on
 *                           loopback only: a raw socket that hashes and stores nothing, the
 *                           CPU floor under any Node client on this machine)
 *   --baseline-seconds <s>  stop the single-stream baselines (undici, skopeo, ctr) on shaped
 *                           profiles after s seconds and report the rate over what they got
 *                           (default 30; 0 = fetch the whole blob, ~10 min more)
 *   --no-curl               skip the curl shaping check (RTT, 1 stream, N ranges)
 *   --curl-only             only the curl shaping check (no fetch methods)
 *   --keep                  keep the temp dir (logs) instead of removing it
 *
 * What runs: Debian's docker-registry on 127.0.0.1 (loopback profile; also used for the
 * push) and, for P1/P2, a second registry process on the same storage inside the registry
 * namespace of scripts/netns-up.sh. Every measured client runs as a child process, inside
 * the client namespace for P1/P2, under /usr/bin/time. Needs root for the namespaces.
 * See bench/README.md for the profiles and reference numbers.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { type ContainerdHandle, startContainerd } from '../test/harness/containerd.js';
import type { ClientResult } from './fetch-client.js';
import type { BigImage } from './lib/big-image.js';
import type { Cleanup } from './lib/cleanup.js';
import {
  type FetchRow,
  floorLine,
  formatTable,
  type ProfileName,
  summarize,
  summaryLine,
  targetVerdicts,
} from './lib/fetch-report.js';
import { SHAPED_PROFILES, ShapedLink } from './lib/netns.js';
import { procCpuSeconds, runMeasured } from './lib/proc.js';
import type { BenchRegistry } from './lib/registry.js';
import {
  assertLinkAvailable,
  benchLogger,
  benchTempDir,
  COMMON_OPTIONS,
  haveCommand,
  parseSizeMiB,
  pushBigImage,
  requireCommands,
  runBench,
  startLinkRegistry,
  writeResults,
} from './lib/setup.js';

const execFileP = promisify(execFile);
const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const REPOSITORY = 'bench/big';
const TAG = 'latest';
const ALL_PROFILES: readonly ProfileName[] = ['loopback', 'P1', 'P2'];
const ALL_METHODS = ['undici', 'skopeo', 'ctr', 'fetcher', 'floor'] as const;
type Method = (typeof ALL_METHODS)[number];
const LABELS: Record<Method, string> = {
  undici: '(a) undici, 1 stream',
  skopeo: '(b) skopeo copy dir:',
  ctr: '(c) ctr content fetch',
  fetcher: '(d) kube-prewarm fetcher',
  floor: '(f) floor: socket + sha256 only',
};
/**
 * curl shaping check: single-stream duration, and how much the parallel ranges fetch (the
 * whole blob on P1, like TESTBED's reference; half a GiB on the slower P2).
 */
const CURL_SINGLE_S = 15;
const CURL_RANGES_BYTES: Record<'P1' | 'P2', number> = { P1: Number.POSITIVE_INFINITY, P2: 512 * 2 ** 20 };

interface Options {
  sizeMiB: number;
  profiles: ProfileName[];
  methods: Method[];
  baselineSeconds: number;
  curl: boolean;
  keep: boolean;
}

/** Where one profile's clients run and whom they talk to. */
interface Target {
  profile: ProfileName;
  /** Client namespace; undefined for loopback. */
  ns: string | undefined;
  /** Registry `ip:port` as seen from the client. */
  host: string;
}

interface Ctx {
  cleanup: Cleanup;
  opts: Options;
  tmp: string;
  image: BigImage;
  clockTicks: number;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      ...COMMON_OPTIONS,
      profiles: { type: 'string', default: ALL_PROFILES.join(',') },
      methods: { type: 'string', default: ALL_METHODS.join(',') },
      'baseline-seconds': { type: 'string', default: '30' },
      'no-curl': { type: 'boolean', default: false },
      'curl-only': { type: 'boolean', default: false },
    },
  });
  const list = <T extends string>(s: string, allowed: readonly T[], what: string): T[] =>
    s.split(',').map((x) => {
      if (!(allowed as readonly string[]).includes(x))
        throw new Error(`unknown ${what} ${x} (${allowed.join(', ')})`);
      return x as T;
    });
  const sizeMiB = parseSizeMiB(values['size-mib']);
  const baselineSeconds = Number(values['baseline-seconds']);
  if (!(baselineSeconds >= 0)) throw new Error('--baseline-seconds must be >= 0');
  return {
    sizeMiB,
    profiles: list(values.profiles, ALL_PROFILES, 'profile'),
    methods: values['curl-only'] ? [] : list(values.methods, ALL_METHODS, 'method'),
    baselineSeconds,
    curl: !values['no-curl'],
    keep: values.keep,
  };
}

/** Total bytes of regular files under `dir` (0 if it does not exist). */
function dirBytes(dir: string): number {
  let total = 0;
  try {
    for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
      if (e.isFile()) total += statSync(join(e.parentPath, e.name)).size;
    }
  } catch {
    // Missing dir, or a temp file renamed away while we looked: count what we saw.
  }
  return total;
}

/**
 * Finds the file named after the digest's hex under `dir` (the store layout is the
 * fetcher's business; `blobs/sha256/<hex>` is expected) and hashes it. Undefined: not found.
 */
async function verifyStored(dir: string, digest: string): Promise<boolean | undefined> {
  const hex = digest.slice('sha256:'.length);
  const hit = readdirSync(dir, { recursive: true, withFileTypes: true }).find(
    (e) => e.isFile() && e.name === hex,
  );
  if (!hit) return undefined;
  const hash = createHash('sha256');
  await pipeline(createReadStream(join(hit.parentPath, hit.name)), hash);
  return `sha256:${hash.digest('hex')}` === digest;
}

const log = benchLogger('fetch');

function baseRow(t: Target, method: string, label: string): FetchRow {
  return { profile: t.profile, method, label, bytes: 0, complete: false, wallS: 0, cpuS: 0, procCpuS: 0 };
}

/** Time limit for a single-stream baseline on this profile (none on loopback). */
function baselineLimit(ctx: Ctx, t: Target): number | undefined {
  return t.profile === 'loopback' || ctx.opts.baselineSeconds === 0 ? undefined : ctx.opts.baselineSeconds;
}

/** (a) and (d): bench/fetch-client.ts in a child process. */
async function runNodeClient(ctx: Ctx, t: Target, method: 'undici' | 'fetcher' | 'floor'): Promise<FetchRow> {
  const row = baseRow(t, method, LABELS[method]);
  const out = join(ctx.tmp, `out-${t.profile}-${method}`);
  const limit = method === 'undici' ? baselineLimit(ctx, t) : undefined;
  const argv = [
    process.execPath,
    '--import',
    'tsx',
    join(REPO_ROOT, 'bench', 'fetch-client.ts'),
    method,
    '--host',
    t.host,
    '--repo',
    REPOSITORY,
    '--digest',
    ctx.image.layerDigest,
    '--size',
    String(ctx.image.layerSize),
    '--out',
    out,
    ...(limit === undefined ? [] : ['--time-limit', String(limit)]),
  ];
  try {
    const r = await runMeasured(ctx.cleanup, {
      argv,
      ns: t.ns,
      cwd: REPO_ROOT,
      tmpDir: ctx.tmp,
      // A backstop only: the client enforces its own limit; the fetcher has none.
      timeLimitS: 900,
    });
    const last = r.stdout.trim().split('\n').pop() ?? '';
    let res: ClientResult;
    try {
      res = JSON.parse(last) as ClientResult;
    } catch {
      row.error = `no result (exit ${r.code ?? r.signal}): ${r.stderr.trim().split('\n').slice(-3).join(' / ')}`;
      return row;
    }
    if (res.skipped !== undefined) row.skipped = res.skipped;
    if (res.error !== undefined) row.error = res.error;
    row.bytes = res.bytes;
    row.complete = res.complete;
    if (res.digestOk !== undefined) row.digestOk = res.digestOk;
    row.wallS = res.wallS;
    row.cpuS = res.userS + res.sysS;
    row.procCpuS = r.userS + r.sysS;
    if (method === 'fetcher' && row.complete && row.error === undefined) {
      // Independent of the fetcher's own verification, and outside its measured CPU time.
      row.digestOk = await verifyStored(out, ctx.image.layerDigest);
    }
    return row;
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

/** (b): `skopeo copy docker://… dir:…`; skopeo checks the digest of what it copies. */
async function runSkopeo(ctx: Ctx, t: Target): Promise<FetchRow> {
  const row = baseRow(t, 'skopeo', LABELS.skopeo);
  const out = join(ctx.tmp, `out-${t.profile}-skopeo`);
  const limit = baselineLimit(ctx, t);
  let partial = 0;
  try {
    const r = await runMeasured(ctx.cleanup, {
      argv: [
        'skopeo',
        'copy',
        '--src-tls-verify=false',
        `docker://${t.host}/${REPOSITORY}:${TAG}`,
        `dir:${out}`,
      ],
      ns: t.ns,
      tmpDir: ctx.tmp,
      timeLimitS: limit,
      onTimeLimit: () => {
        partial = dirBytes(out);
      },
    });
    row.wallS = r.wallS;
    row.cpuS = row.procCpuS = r.userS + r.sysS;
    if (r.timedOut) {
      row.bytes = partial;
    } else if (r.code === 0) {
      row.bytes = statSync(join(out, ctx.image.layerDigest.slice(7))).size;
      row.complete = row.bytes === ctx.image.layerSize;
    } else {
      row.error = `exit ${r.code ?? r.signal}: ${r.stderr.trim().split('\n').slice(-2).join(' / ')}`;
    }
    return row;
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

/** (c): `ctr content fetch` into a fresh private containerd (its CPU share is counted too). */
async function runCtr(ctx: Ctx, t: Target): Promise<FetchRow> {
  const row = baseRow(t, 'ctr', LABELS.ctr);
  let ctd: ContainerdHandle | undefined;
  try {
    // No CRI plugin: only the content store, whose CPU is counted below.
    ctd = await startContainerd({ cri: false, logLevel: 'warn', readyTimeoutMs: 20_000 });
    const daemon = ctd;
    const pid = daemon.process?.pid;
    if (pid === undefined) throw new Error('containerd is not running');
    const cpu0 = procCpuSeconds(pid, ctx.clockTicks);
    let partial: { bytes: number; daemonCpu: number } | undefined;
    const r = await runMeasured(ctx.cleanup, {
      argv: [
        'ctr',
        '--address',
        daemon.address,
        '-n',
        'bench',
        'content',
        'fetch',
        '--plain-http',
        `${t.host}/${REPOSITORY}:${TAG}`,
      ],
      ns: t.ns,
      tmpDir: ctx.tmp,
      timeLimitS: baselineLimit(ctx, t),
      onTimeLimit: () => {
        partial = {
          bytes: dirBytes(daemon.contentDir),
          daemonCpu: procCpuSeconds(pid, ctx.clockTicks),
        };
      },
    });
    const daemonCpu = (partial?.daemonCpu ?? procCpuSeconds(pid, ctx.clockTicks)) - cpu0;
    row.wallS = r.wallS;
    row.cpuS = row.procCpuS = r.userS + r.sysS + daemonCpu;
    if (r.timedOut && partial) {
      row.bytes = partial.bytes;
    } else if (r.code === 0) {
      const hex = ctx.image.layerDigest.slice(7);
      row.bytes = statSync(join(daemon.contentDir, 'blobs', 'sha256', hex)).size;
      row.complete = row.bytes === ctx.image.layerSize;
    } else {
      row.error = `exit ${r.code ?? r.signal}: ${r.stderr.trim().split('\n').slice(-2).join(' / ')}`;
    }
    return row;
  } catch (err) {
    row.error = (err as Error).message.split('\n')[0];
    return row;
  } finally {
    await ctd?.close();
  }
}

/**
 * The shaping check, with curl from the client namespace: TCP connect time (the RTT the
 * NFQUEUE delay adds; ping would not show it), one stream for CURL_SINGLE_S seconds, and
 * N parallel ranges over the first CURL_RANGES_BYTES of the blob (split evenly; the last
 * few bytes of the blob are left out when it does not divide).
 */
async function curlCheck(
  ctx: Ctx,
  t: Target & { profile: 'P1' | 'P2' },
): Promise<{ rows: FetchRow[]; rttMs: number }> {
  const p = SHAPED_PROFILES[t.profile];
  const url = `http://${t.host}/v2/${REPOSITORY}/blobs/${ctx.image.layerDigest}`;
  const connects: number[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await runMeasured(ctx.cleanup, {
      argv: ['curl', '-s', '-o', '/dev/null', '-w', '%{time_connect}', `http://${t.host}/v2/`],
      ns: t.ns,
      tmpDir: ctx.tmp,
    });
    connects.push(Number(r.stdout) * 1000);
  }
  connects.sort((a, b) => a - b);
  const rttMs = connects[2]!;

  const single = baseRow(t, 'curl-1', 'curl, 1 stream (check)');
  const r1 = await runMeasured(ctx.cleanup, {
    argv: [
      'curl',
      '-s',
      '-o',
      '/dev/null',
      '--max-time',
      String(CURL_SINGLE_S),
      '-w',
      '%{size_download}',
      url,
    ],
    ns: t.ns,
    tmpDir: ctx.tmp,
  });
  single.bytes = Number(r1.stdout);
  single.wallS = r1.wallS;
  single.cpuS = single.procCpuS = r1.userS + r1.sysS;
  single.complete = r1.code === 0;
  // 28: curl's "operation timed out", the expected end of this time-boxed run.
  if (r1.code !== 0 && r1.code !== 28) single.error = `curl exit ${r1.code}`;

  const n = p.curlRanges;
  const total = Math.min(CURL_RANGES_BYTES[t.profile], ctx.image.layerSize);
  const per = Math.floor(total / n);
  const ranges = Array.from({ length: n }, (_, i) => `${i * per}-${(i + 1) * per - 1}`);
  const multi = baseRow(t, 'curl-N', `curl, ${n} ranges (check)`);
  const rn = await runMeasured(ctx.cleanup, {
    argv: [
      'sh',
      '-c',
      'u=$1; shift; for r in "$@"; do curl -s -o /dev/null -w "%{http_code} %{size_download}\\n" -r "$r" "$u" & done; wait',
      'sh',
      url,
      ...ranges,
    ],
    ns: t.ns,
    tmpDir: ctx.tmp,
  });
  const answers = rn.stdout.trim().split('\n');
  multi.bytes = answers.reduce((s, l) => s + Number(l.split(' ')[1] ?? 0), 0);
  multi.wallS = rn.wallS;
  multi.cpuS = multi.procCpuS = rn.userS + rn.sysS;
  multi.complete = true;
  if (answers.length !== n || answers.some((l) => !l.startsWith('206 ')))
    multi.error = `curl: ${answers.join(', ')}`;
  return { rows: [single, multi], rttMs };
}

async function runProfile(ctx: Ctx, t: Target, rows: FetchRow[]): Promise<void> {
  for (const m of ctx.opts.methods) {
    if (m === 'floor' && t.profile !== 'loopback') continue;
    const limit = m === 'fetcher' ? undefined : baselineLimit(ctx, t);
    log(`${t.profile}: ${LABELS[m]}${limit ? ` (at most ${limit} s)` : ''}`);
    let row: FetchRow;
    if (m === 'undici' || m === 'fetcher' || m === 'floor') row = await runNodeClient(ctx, t, m);
    else if (m === 'skopeo') row = await runSkopeo(ctx, t);
    else if (!haveCommand('ctr') || !haveCommand('containerd'))
      row = { ...baseRow(t, m, LABELS[m]), skipped: 'ctr/containerd not installed' };
    else row = await runCtr(ctx, t);
    rows.push(row);
    if (row.skipped) log(`  skipped: ${row.skipped}`);
    else if (row.error) log(`  error: ${row.error}`);
    else log(`  ${(row.bytes / row.wallS / 1e6).toFixed(1)} MB/s, ${row.cpuS.toFixed(2)} CPU-s`);
  }
}

async function main(cleanup: Cleanup): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const shaped = opts.profiles.filter((p): p is 'P1' | 'P2' => p !== 'loopback');
  requireCommands(
    ['docker-registry', 'skopeo', 'curl', '/usr/bin/time', 'setpriv'],
    ' (apt-get install docker-registry skopeo curl time util-linux)',
  );
  const link = new ShapedLink(cleanup);
  if (shaped.length > 0) assertLinkAvailable(link);

  const tmp = benchTempDir(cleanup, 'kp-bench-fetch-', opts.keep, log);
  const clockTicks = Number((await execFileP('getconf', ['CLK_TCK'])).stdout.trim()) || 100;
  const started = Date.now();

  // The image: built as an OCI layout, pushed to a loopback registry with its digests kept.
  const {
    image,
    storage,
    registry: loop,
  } = await pushBigImage(cleanup, {
    tmp,
    sizeMiB: opts.sizeMiB,
    repository: REPOSITORY,
    tag: TAG,
    log,
  });

  const ctx: Ctx = { cleanup, opts, tmp, image, clockTicks };
  const rows: FetchRow[] = [];
  const rtts: string[] = [];
  let nsRegistry: BenchRegistry | undefined;
  for (const profile of opts.profiles) {
    if (profile === 'loopback') {
      await runProfile(ctx, { profile, ns: undefined, host: loop.host }, rows);
      continue;
    }
    log(`${profile}: shaping the link (${SHAPED_PROFILES[profile].description})`);
    await link.up(profile);
    nsRegistry ??= await startLinkRegistry(cleanup, tmp, storage, link);
    const t = { profile, ns: link.cliNs, host: nsRegistry.host };
    if (opts.curl) {
      log(`${profile}: curl shaping check`);
      const check = await curlCheck(ctx, t);
      rows.push(...check.rows);
      rtts.push(`${profile} ${check.rttMs.toFixed(1)} ms`);
      log(`  TCP connect ${check.rttMs.toFixed(1)} ms`);
    }
    await runProfile(ctx, t, rows);
  }
  await nsRegistry?.stop();
  await loop.stop();

  const summary = summarize(rows, SHAPED_PROFILES.P2.linkBytesPerS);
  const jsonPath = writeResults('fetch', { options: opts, image, rtts, rows, summary });

  console.log('');
  console.log(
    `blob: ${image.layerSize} bytes (${(image.layerSize / 2 ** 30).toFixed(2)} GiB), incompressible; ` +
      `MB = 1e6 B, GB = 1e9 B; ran ${((Date.now() - started) / 1000).toFixed(0)} s`,
  );
  for (const p of shaped) console.log(`${p}: ${SHAPED_PROFILES[p].description}`);
  if (rtts.length > 0) console.log(`TCP connect (median of 5): ${rtts.join(', ')}`);
  console.log('');
  console.log(formatTable(rows));
  console.log('');
  console.log(`targets: ${targetVerdicts(summary)}`);
  const floor = floorLine(rows);
  if (floor) console.log(floor);
  console.log(`results: ${jsonPath}`);
  console.log(summaryLine(summary));
}

await runBench('fetch', main);
