/**
 * bench/pod-start: how long the container runtime takes to have an image ready for a pod
 * (CRI PullImage, which fetches and unpacks), for a >= 1 GiB image over a shaped link
 * (issue #3). Not a test: it prints numbers.
 *
 *   npm run bench -- pod-start [options]      (or: node --import tsx bench/pod-start.ts [options])
 *
 * Options:
 *   --size-mib <n>     payload of the single (uncompressed) layer (default 1024)
 *   --profile <p>      P2 (default: 200 Mbit, 50 ms RTT: the link is the bottleneck),
 *                      P1 (1 Gbit, 50 ms, 256 KiB window per connection), or loopback
 *   --runs <n>         repetitions of each scenario (default 1); medians are reported
 *   --keep             keep the temp dir (logs)
 *
 * Scenarios, each PullImage by digest timed from the CRI call to its answer:
 *   cold      a fresh containerd pulls from the registry across the link (hosts.toml: registry only);
 *   mirror    the image was prewarmed (`kube-prewarm warm` across the same link, timed apart)
 *             into the store that `kube-prewarm serve` serves on the node's loopback; a fresh
 *             containerd pulls through hosts.toml (mirror first, registry as server);
 *   unpacked  the same containerd pulls again (kubelet's IfNotPresent case after unpack mode).
 *
 * Topology (shaped profiles): the registry runs in the registry namespace of
 * scripts/netns-up.sh; containerd, the mirror and the warm CLI run in the client namespace
 * (so "node-local" is that namespace's loopback); the bench talks CRI to containerd over its
 * unix socket. Our own namespace names (kp-psreg / kp-pscli) keep out of bench/fetch's way.
 * Needs root for the namespaces.
 */
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { CriImageService } from '../agent/src/runtime/cri-image-service.js';
import { HostsTomlInstaller } from '../agent/src/runtime/hosts-installer.js';
import { type ContainerdHandle, startContainerd } from '../test/harness/containerd.js';
import type { Cleanup } from './lib/cleanup.js';
import { SHAPED_PROFILES, ShapedLink } from './lib/netns.js';
import { inNetns, logTail, runMeasured, startDaemon, waitUntil } from './lib/proc.js';
import { freeLoopbackPort } from './lib/registry.js';
import {
  assertLinkAvailable,
  benchLogger,
  benchTempDir,
  COMMON_OPTIONS,
  parseSizeMiB,
  pushBigImage,
  requireCommands,
  runBench,
  startLinkRegistry,
  writeResults,
} from './lib/setup.js';

const execFileP = promisify(execFile);
const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(REPO_ROOT, 'bench', 'pod-start', 'cli.ts');
const REPOSITORY = 'bench/podstart';
const TAG = 'latest';

type Profile = 'P1' | 'P2' | 'loopback';

interface Options {
  sizeMiB: number;
  profile: Profile;
  runs: number;
  keep: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      ...COMMON_OPTIONS,
      profile: { type: 'string', default: 'P2' },
      runs: { type: 'string', default: '1' },
    },
  });
  const sizeMiB = parseSizeMiB(values['size-mib']);
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');
  if (!['P1', 'P2', 'loopback'].includes(values.profile))
    throw new Error('--profile must be P1, P2 or loopback');
  return { sizeMiB, profile: values.profile as Profile, runs, keep: values.keep };
}

const log = benchLogger('pod-start');

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; s: number }> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { value, s: Number(process.hrtime.bigint() - t0) / 1e9 };
}

interface Ctx {
  cleanup: Cleanup;
  tmp: string;
  ns: string | undefined;
  /** Registry `ip:port` as seen from the client side. */
  registryHost: string;
  ref: string;
  /** The mirror's port on the client side's loopback. */
  mirrorPort: number;
}

/** A fresh containerd (own dir) with one hosts.toml for the registry; `mirrors` first when given. */
async function freshContainerd(ctx: Ctx, mirrors: string[]): Promise<ContainerdHandle> {
  const ctd = await startContainerd({ netns: ctx.ns, logLevel: 'warn' });
  try {
    const registryUrl = `http://${ctx.registryHost}`;
    await new HostsTomlInstaller({ configPath: ctd.certsDir, fsync: false }).install([
      // containerd 1.6 rejects a hosts.toml without a [host] table: list the registry itself.
      { registry: ctx.registryHost, server: registryUrl, mirrors: [...mirrors, registryUrl] },
    ]);
    return ctd;
  } catch (err) {
    await ctd.close();
    throw err;
  }
}

async function pull(ctd: ContainerdHandle, ref: string): Promise<{ s: number; id: string }> {
  const cri = new CriImageService({ address: ctd.address });
  try {
    const { value, s } = await timed(() => cri.pullImage(ref));
    const status = await cri.imageStatus(ref);
    if (status?.id !== value) throw new Error(`PullImage ${ref}: ImageStatus shows ${status?.id}`);
    return { s, id: value };
  } finally {
    cri.close();
  }
}

interface RunResult {
  coldS: number;
  warmS: number;
  mirrorS: number;
  unpackedS: number;
}

async function runOnce(ctx: Ctx, i: number): Promise<RunResult> {
  // cold
  const cold = await freshContainerd(ctx, []);
  log(`run ${i}: cold PullImage from the registry`);
  const c = await pull(cold, ctx.ref);
  log(`  ${c.s.toFixed(2)} s`);
  await cold.close();

  // prewarm into a fresh store, then serve it
  const store = join(ctx.tmp, `store-${i}`);
  log(`run ${i}: kube-prewarm warm (across the same link)`);
  const w = await runMeasured(ctx.cleanup, {
    argv: [
      process.execPath,
      '--import',
      'tsx',
      CLI,
      'warm',
      `${ctx.registryHost}/${REPOSITORY}:${TAG}`,
      '--store',
      store,
      '--plain-http',
      ctx.registryHost,
      '--no-fsync',
      '--json',
    ],
    ns: ctx.ns,
    cwd: REPO_ROOT,
    tmpDir: ctx.tmp,
  });
  if (w.code !== 0)
    throw new Error(`warm failed (${w.code}): ${w.stderr.trim().split('\n').slice(-3).join(' / ')}`);
  log(`  ${w.wallS.toFixed(2)} s`);
  const serveLog = join(ctx.tmp, `serve-${i}.log`);
  const serve = startDaemon(ctx.cleanup, {
    name: 'kube-prewarm serve',
    argv: [
      process.execPath,
      '--import',
      'tsx',
      CLI,
      'serve',
      '--store',
      store,
      '--listen',
      `127.0.0.1:${ctx.mirrorPort}`,
      '--plain-http',
      ctx.registryHost,
      '--log-level',
      'warn',
    ],
    ns: ctx.ns,
    logPath: serveLog,
  });
  try {
    await waitUntil(
      async () => {
        if (serve.exited()) throw new Error('exited');
        const probe = inNetns(ctx.ns, [
          'curl',
          '-sf',
          '-o',
          '/dev/null',
          `http://127.0.0.1:${ctx.mirrorPort}/v2/`,
        ]);
        await execFileP(probe[0]!, probe.slice(1));
        return true;
      },
      30_000,
      () => `mirror not answering\n${logTail(serveLog)}`,
    );
    const node = await freshContainerd(ctx, [`http://127.0.0.1:${ctx.mirrorPort}`]);
    log(`run ${i}: PullImage through the warmed mirror`);
    const m = await pull(node, ctx.ref);
    log(`  ${m.s.toFixed(2)} s`);
    log(`run ${i}: PullImage of the unpacked image`);
    const u = await pull(node, ctx.ref);
    log(`  ${u.s.toFixed(3)} s`);
    if (m.id !== c.id || u.id !== c.id) throw new Error(`image ids differ: ${c.id} ${m.id} ${u.id}`);
    await node.close();
    return { coldS: c.s, warmS: w.wallS, mirrorS: m.s, unpackedS: u.s };
  } finally {
    await serve.stop();
    rmSync(store, { recursive: true, force: true });
  }
}

async function main(cleanup: Cleanup): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  // Children (tsx, the CLI) resolve from the repository.
  process.chdir(REPO_ROOT);
  requireCommands(['docker-registry', 'skopeo', 'containerd', 'ctr', 'curl', '/usr/bin/time', 'setpriv']);
  const shaped = opts.profile !== 'loopback';
  const link = new ShapedLink(cleanup, { regNs: 'kp-psreg', cliNs: 'kp-pscli' });
  if (shaped) assertLinkAvailable(link);
  const tmp = benchTempDir(cleanup, 'kp-pod-', opts.keep, log);

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

  let registryHost = loop.host;
  let ns: string | undefined;
  if (shaped) {
    const p = SHAPED_PROFILES[opts.profile as 'P1' | 'P2'];
    log(`shaping the link: ${opts.profile} (${p.description})`);
    await link.up(opts.profile as 'P1' | 'P2');
    await loop.stop();
    const reg = await startLinkRegistry(cleanup, tmp, storage, link);
    registryHost = reg.host;
    ns = link.cliNs;
  }
  const ctx: Ctx = {
    cleanup,
    tmp,
    ns,
    registryHost,
    ref: `${registryHost}/${REPOSITORY}@${image.manifestDigest}`,
    // The client namespace's loopback is ours alone; on the host's, take a free port.
    mirrorPort: shaped ? 5055 : await freeLoopbackPort(),
  };
  const results: RunResult[] = [];
  for (let i = 1; i <= opts.runs; i++) results.push(await runOnce(ctx, i));

  const cold = median(results.map((r) => r.coldS));
  const mirror = median(results.map((r) => r.mirrorS));
  const unpacked = median(results.map((r) => r.unpackedS));
  const warm = median(results.map((r) => r.warmS));
  const gib = image.layerSize / 2 ** 30;
  const rows = [
    ['cold (registry over the link)', cold],
    ['warmed mirror (node-local)', mirror],
    ['already unpacked', unpacked],
  ] as const;
  const out = [
    '',
    `pod-start: CRI PullImage of a ${gib.toFixed(2)} GiB image (1 uncompressed layer), profile ${opts.profile}` +
      `${shaped ? ` (${SHAPED_PROFILES[opts.profile as 'P1' | 'P2'].description})` : ''}, median of ${opts.runs}`,
    ...rows.map(
      ([k, s]) =>
        `  ${k.padEnd(32)} ${s.toFixed(3).padStart(9)} s   ${(image.layerSize / s / 1e6).toFixed(1).padStart(8)} MB/s`,
    ),
    `  ${'prewarm (kube-prewarm warm)'.padEnd(32)} ${warm.toFixed(3).padStart(9)} s   (ahead of the pod; not on its path)`,
    `  cold / warmed mirror   = ${(cold / mirror).toFixed(1)}x   (target >= 5x when the link is the bottleneck)`,
    `  cold / already unpacked = ${(cold / unpacked).toFixed(0)}x  (unpacked: ${(unpacked * 1000).toFixed(0)} ms)`,
    '',
  ];
  console.log(out.join('\n'));
  const file = writeResults('pod-start', {
    profile: opts.profile,
    layerBytes: image.layerSize,
    runs: results,
    cold,
    mirror,
    unpacked,
    warm,
  });
  log(`wrote ${file}`);
}

await runBench('pod-start', main);
