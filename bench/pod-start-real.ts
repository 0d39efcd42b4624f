/**
 * bench/pod-start-real: real Pod create → Running on a real node (kubelet, scheduler,
 * containerd; test/harness/cluster.ts) for an image of 1 GiB, with the registry behind a
 * shaped link (its own network namespace, profile P2 by default). Not a test: it prints a
 * table and the two ratios of issue 10 against their targets.
 *
 *   npm run bench -- pod-start-real [--size-mib 1024] [--runs 3] [--profile P2|P1|none]
 *
 * Scenarios, each `--runs` times with an image of its own (same size, other bytes), the
 * median reported; time = from the Pod's POST to the first GET that shows it Running:
 *   cold       plain kubelet + containerd (kube-prewarm not installed yet): the pull crosses
 *              the link;
 *   present    right after a cold run, a second Pod with the same image (kubelet finds it
 *              present): the floor;
 *   cache      kube-prewarm installed, an ImagePrewarm (mode cache) Ready first; the Pod's
 *              pull is served by the node-local mirror from the store, then unpacked;
 *   unpack     an ImagePrewarm (mode unpack) Ready first: the image is unpacked before the
 *              Pod exists.
 * The prewarm itself (ImagePrewarm create → Ready) is timed apart and reported too.
 *
 * Topology: the cluster uses KP_CLUSTER_ID 9 unless set; scripts/netns-up.sh joins a
 * registry namespace `kp<id>-reg` to node 1's network namespace by a shaped veth (tbf, and
 * NFQUEUE delay on the node's INPUT); a second registry process serves the cluster
 * registry's storage there. Needs root.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs, promisify } from 'node:util';
import type { Cleanup } from './lib/cleanup.js';
import { SHAPED_PROFILES, ShapedLink } from './lib/netns.js';
import { startBenchRegistry } from './lib/registry.js';
import {
  benchLogger,
  benchTempDir,
  parseSizeMiB,
  requireCommands,
  runBench,
  writeResults,
} from './lib/setup.js';

process.env.KP_CLUSTER_ID ??= '9';
const execFileP = promisify(execFile);
const log = benchLogger('pod-start-real');
const NS = 'bench';
const MiB = 2 ** 20;

type Scenario = 'cold' | 'present' | 'cache' | 'unpack';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

// biome-ignore lint/suspicious/noExplicitAny: API objects as JSON.
type Json = any;

async function main(cleanup: Cleanup): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      'size-mib': { type: 'string', default: '1024' },
      runs: { type: 'string', default: '3' },
      profile: { type: 'string', default: 'P2' },
      keep: { type: 'boolean', default: false },
    },
  });
  const sizeMiB = parseSizeMiB(values['size-mib']);
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');
  const profile = values.profile as 'P1' | 'P2' | 'none';
  if (!['P1', 'P2', 'none'].includes(profile)) throw new Error('--profile must be P1, P2 or none');
  requireCommands(['docker-registry', 'skopeo', 'curl', 'tc', 'iptables-legacy', 'gcc']);
  if (process.getuid?.() !== 0) throw new Error('needs root (namespaces, cgroups, mounts)');

  // Loaded after KP_CLUSTER_ID is set: the cluster's addresses derive from it.
  const { startE2e, waitForState, prewarmPath } = await import('../test/e2e/env.js');
  const { create, ensureNamespace, get, waitPrewarmReady } = await import('../test/e2e/kube.js');
  const { CLUSTER_NET, registryHostsToml } = await import('../test/harness/cluster.js');
  const { pushImage } = await import('../test/harness/images.js');

  const tmp = benchTempDir(cleanup, 'kp-pod-start-real-', values.keep, log);
  log(`starting a cluster (id ${CLUSTER_NET.id}) and building the kube-prewarm images`);
  const env = await startE2e({ install: false });
  try {
    const c = env.cluster;
    const node = c.nodes[0]!;
    const link = new ShapedLink(cleanup, { regNs: `kp${CLUSTER_NET.id}-reg`, cliNs: CLUSTER_NET.netns(1) });
    await link.up('none');
    // Pods (the operator resolving tags) reach the registry through their node.
    await execFileP('ip', ['-n', link.regNs, 'route', 'replace', CLUSTER_NET.podCidr, 'via', link.cliIp]);
    const registry = await startBenchRegistry(cleanup, {
      dir: tmp,
      storageDir: c.registry.rootDir,
      addr: `${link.regIp}:5000`,
      ns: link.regNs,
      name: 'registry-shaped',
    });
    const reg = registry.host;
    await node.writeFileInNode(`/etc/containerd/certs.d/${reg}/hosts.toml`, registryHostsToml(reg));
    await ensureNamespace(c, NS);

    const busybox = await readFile('/bin/busybox');
    let seed = 1000;
    const push = async (tag: string): Promise<string> => {
      log(`building and pushing ${sizeMiB} MiB image bench/app:${tag}`);
      await pushImage(c.registry, {
        repository: 'bench/app',
        tag,
        layers: [
          { files: { 'bin/busybox': busybox }, executables: ['bin/busybox'] },
          { randomBytes: sizeMiB * MiB, seed: seed++ },
        ],
      });
      return `${reg}/bench/app:${tag}`;
    };
    const images: Record<'cold' | 'cache' | 'unpack', string[]> = { cold: [], cache: [], unpack: [] };
    for (const s of ['cold', 'cache', 'unpack'] as const)
      for (let i = 0; i < runs; i++) images[s].push(await push(`${s}-${i}`));

    if (profile !== 'none') {
      log(`shaping the registry link: ${SHAPED_PROFILES[profile].description}`);
      await link.up(profile);
    }

    let podN = 0;
    /** POSTs a Pod running `image` and returns the seconds until it is seen Running; deletes it after. */
    const podStart = async (image: string): Promise<number> => {
      const name = `p${podN++}`;
      const pod = {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name, namespace: NS },
        spec: {
          terminationGracePeriodSeconds: 0,
          containers: [
            {
              name: 'app',
              image,
              imagePullPolicy: 'IfNotPresent',
              command: ['/bin/busybox', 'sleep', '3600'],
            },
          ],
        },
      };
      const t0 = performance.now();
      await create(c, `/api/v1/namespaces/${NS}/pods`, pod);
      let last: Json;
      for (;;) {
        last = await get(c, `/api/v1/namespaces/${NS}/pods/${name}`);
        if (last.status?.phase === 'Running' && last.status.containerStatuses?.[0]?.state?.running) break;
        if (last.status?.phase === 'Failed' || performance.now() - t0 > 900_000)
          throw new Error(`pod ${name} not Running: ${JSON.stringify(last.status)}`);
        await sleep(100);
      }
      const s = (performance.now() - t0) / 1000;
      await c.kube.request('DELETE', `/api/v1/namespaces/${NS}/pods/${name}?gracePeriodSeconds=0`);
      await waitForState(
        `pod ${name} gone`,
        async () => (await c.kube.request('GET', `/api/v1/namespaces/${NS}/pods/${name}`)).status,
        (st) => st === 404,
        120_000,
      );
      return s;
    };

    /** The agent's count of blob bytes its mirror served from the store (Prometheus text). */
    const mirrorStoreBytes = async (): Promise<number> => {
      const text = await node.run('curl', ['-sf', 'http://127.0.0.1:9464/metrics']);
      const m = /^kprw_agent_mirror_blob_bytes_total\{source="store"\} (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(
        text,
      );
      return m ? Number(m[1]) : 0;
    };
    const mirrorBytes: number[] = [];

    const times: Record<Scenario, number[]> = { cold: [], present: [], cache: [], unpack: [] };
    const prewarmS: Record<'cache' | 'unpack', number[]> = { cache: [], unpack: [] };
    for (const image of images.cold) {
      times.cold.push(await podStart(image));
      times.present.push(await podStart(image));
      log(`cold ${times.cold.at(-1)!.toFixed(2)} s, present ${times.present.at(-1)!.toFixed(2)} s`);
    }

    log('installing kube-prewarm with helm');
    await env.install({
      registries: { allowed: [reg], plainHttp: [reg] },
      agent: { mirror: { hostsToml: { registries: [reg] } } },
    });
    for (const mode of ['cache', 'unpack'] as const) {
      for (const [i, image] of images[mode].entries()) {
        const name = `${mode}-${i}`;
        const t0 = performance.now();
        await create(c, prewarmPath(NS), {
          apiVersion: 'prewarm.kube-prewarm.io/v1alpha1',
          kind: 'ImagePrewarm',
          metadata: { name, namespace: NS },
          spec: { images: [{ repository: `${reg}/bench/app`, tag: `${mode}-${i}` }], mode },
        });
        await waitPrewarmReady(c, NS, name, 1_800_000);
        prewarmS[mode].push((performance.now() - t0) / 1000);
        const before = await mirrorStoreBytes();
        times[mode].push(await podStart(image));
        if (mode === 'cache') mirrorBytes.push((await mirrorStoreBytes()) - before);
        log(
          `${mode}: prewarm ${prewarmS[mode].at(-1)!.toFixed(1)} s, pod ${times[mode].at(-1)!.toFixed(2)} s`,
        );
      }
    }

    const med = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)])) as Record<
      Scenario,
      number
    >;
    const unpackVsPresent = med.unpack / med.present;
    const coldVsUnpack = med.cold / med.unpack;
    const link0 = profile === 'none' ? 'unshaped veth' : SHAPED_PROFILES[profile].description;
    const rows = [
      ['cold (no kube-prewarm)', med.cold, times.cold],
      ['prewarmed, cache mode', med.cache, times.cache],
      ['prewarmed, unpack mode', med.unpack, times.unpack],
      ['image already present', med.present, times.present],
    ] as const;
    const out = [
      `pod-start-real: Pod create → Running, ${sizeMiB} MiB image, registry over ${link0}, median of ${runs}`,
      '',
      '| scenario | median | runs (s) | ÷ present |',
      '| --- | --- | --- | --- |',
      ...rows.map(
        ([n, m, all]) =>
          `| ${n} | ${m.toFixed(2)} s | ${all.map((x) => x.toFixed(2)).join(', ')} | ${(m / med.present).toFixed(2)}x |`,
      ),
      '',
      `cache mode: the mirror served ${mirrorBytes.map((b) => `${(b / MiB).toFixed(0)} MiB`).join(', ')} from the node store per pod`,
      `prewarm (ImagePrewarm → Ready), median: cache ${median(prewarmS.cache).toFixed(1)} s, unpack ${median(prewarmS.unpack).toFixed(1)} s`,
      `prewarmed unpack ÷ present = ${unpackVsPresent.toFixed(2)} (target ≤ 1.2: ${unpackVsPresent <= 1.2 ? 'met' : 'NOT met'})`,
      `cold ÷ prewarmed unpack = ${coldVsUnpack.toFixed(1)} (target ≥ 20: ${coldVsUnpack >= 20 ? 'met' : 'NOT met'})`,
    ].join('\n');
    console.log(out);
    log(
      `results: ${writeResults('pod-start-real', { sizeMiB, runs, profile, times, prewarmS, med, unpackVsPresent, coldVsUnpack })}`,
    );
    await registry.stop();
  } finally {
    await env.close();
  }
}

await runBench('pod-start-real', main);
