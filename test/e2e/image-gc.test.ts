/**
 * kubelet image GC against a warmed image (issue 10, 4d), on a real node in `unpack` mode.
 * kubelet deletes unused images by design (kubernetes#103255); the agent's WarmKeeper sees
 * containerd's image delete event and imports the image again through the node-local
 * mirror, from the node's store, under its digest and its tag, and counts it in the job;
 * the operator shows the count in `status.images[].rewarms`.
 *
 * The image GC is forced by restarting the node's kubelet with imageGCHighThresholdPercent
 * 1, imageGCLowThresholdPercent 0 and imageMinimumGCAge 0s while no pod uses the warmed
 * image (kubelet runs image GC at start and every 5 min). Evidence that GC did delete it:
 * the kubelet's log names the image id it removed. The operator resyncs every 15 s here
 * (KUBE_PREWARM_RESYNC_MS), which is when it re-reads completed jobs' counts.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pushImage } from '../harness/images.js';
import { type E2eEnv, prewarmPath, startE2e, waitForState } from './env.js';
import { condition, create, ensureNamespace, eventLines, get, type Json, waitAppRunning } from './kube.js';

const MiB = 1024 * 1024;
const NS = 'team-gc';

describe('kubelet image GC: the warmed image is re-warmed from the store and counted', {
  timeout: 1_800_000,
}, () => {
  let env: E2eEnv;
  before(async () => {
    env = await startE2e({ values: { operator: { extraEnv: { KUBE_PREWARM_RESYNC_MS: '15000' } } } });
    await ensureNamespace(env.cluster, NS);
  });
  after(async () => {
    await env?.close();
  });

  test('unpack mode: forced image GC deletes it, the agent re-imports it with 0 registry blob bytes, status counts it', async (t) => {
    const c = env.cluster;
    const node = c.nodes[0]!;
    const repository = 'team/gc';
    const img = await pushImage(c.registry, {
      repository,
      tag: 'v1',
      layers: [
        { files: { 'bin/busybox': await readFile('/bin/busybox') }, executables: ['bin/busybox'] },
        { randomBytes: 64 * MiB, seed: 31 },
      ],
    });
    const imageId = img.manifests[0]!.config.digest;
    const byDigest = `${c.registryHost}/${repository}@${img.digest}`;
    const byTag = `${c.registryHost}/${repository}:v1`;
    const blobs = new RegExp(`^/v2/${repository}/blobs/sha256:`);

    await create(c, prewarmPath(NS), {
      apiVersion: 'prewarm.kube-prewarm.io/v1alpha1',
      kind: 'ImagePrewarm',
      metadata: { name: 'gc', namespace: NS },
      spec: { images: [{ repository: `${c.registryHost}/${repository}`, tag: 'v1' }], mode: 'unpack' },
    });
    const warm = await waitForState(
      'ImagePrewarm gc unpacked on the node',
      async () => (await get(c, prewarmPath(NS, 'gc'))).status ?? {},
      (s: Json) => s.warm === '1/1' && s.images?.[0]?.nodePhases?.unpacked === 1,
      600_000,
    );
    assert.equal(warm.images[0].rewarms, 0);
    const listed = async () => (await node.containerd.ctr(['images', 'ls', '-q'])).stdout.split('\n');
    assert.ok((await listed()).includes(byDigest), `containerd has ${byDigest}: ${await listed()}`);

    // Force image GC: no pod uses the image; every unused, unpinned image goes.
    c.proxy.resetStats();
    const kubeletLog = join(node.dir, 'kubelet.log');
    const logBefore = (await readFile(kubeletLog, 'utf8')).length;
    const restarted = Date.now();
    await node.stopKubelet();
    await node.startKubelet({
      imageGCHighThresholdPercent: 1,
      imageGCLowThresholdPercent: 0,
      imageMinimumGCAge: '0s',
    });
    await c.waitNodeReady(node.name);

    // kubelet removed it (its log names the image), the agent put it back and counted it,
    // and the operator shows the count.
    const gcLine = await waitForState(
      `kubelet image GC removing ${imageId}`,
      async () =>
        (await readFile(kubeletLog, 'utf8'))
          .slice(logBefore)
          .split('\n')
          .filter((l) => l.includes(imageId.slice('sha256:'.length)) && /[Rr]emov/.test(l)),
      (lines) => lines.length > 0,
      600_000,
    );
    const gcSeconds = Math.round((Date.now() - restarted) / 1000);
    const counted = await waitForState(
      'status.images[0].rewarms >= 1',
      async () => (await get(c, prewarmPath(NS, 'gc'))).status ?? {},
      (s: Json) => (s.images?.[0]?.rewarms ?? 0) >= 1,
      600_000,
    );
    assert.equal(counted.warm, '1/1', 'still warm');
    assert.equal(condition({ status: counted }, 'Ready')?.status, 'True');
    // Back under both references the job unpacked: the digest and the tag pods name.
    await waitForState(
      `${byDigest} and ${byTag} back in containerd`,
      listed,
      (l) => l.includes(byDigest) && l.includes(byTag),
      300_000,
    );
    assert.equal(
      c.proxy.bytes(blobs),
      0,
      `the re-import is served from the node's store: ${JSON.stringify(c.proxy.stats.log.filter((e) => blobs.test(e.path)))}; kubelet: ${gcLine[0]}`,
    );

    const refs = (await listed()).filter((l) => l.startsWith(`${c.registryHost}/${repository}`));
    const gcFailures = (await readFile(kubeletLog, 'utf8'))
      .slice(logBefore)
      .split('\n')
      .filter((l) => /[Ii]mage garbage collection failed|ImageGCFailed/.test(l));
    t.diagnostic(
      `kubelet GC seen ${gcSeconds}s after the restart (${gcFailures.length} failed GC passes before); rewarms=${counted.images[0].rewarms}; refs after re-warm: ${refs.join(', ')}`,
    );
    if (gcFailures[0]) t.diagnostic(`first failed GC pass: ${gcFailures[0].slice(0, 300)}`);

    // The re-warmed image serves a pod that names it by tag as an image present on the machine.
    await create(c, `/api/v1/namespaces/${NS}/pods`, {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'app-gc', namespace: NS, labels: { app: 'app-gc' } },
      spec: {
        terminationGracePeriodSeconds: 1,
        containers: [
          {
            name: 'app',
            image: byTag,
            imagePullPolicy: 'IfNotPresent',
            command: ['/bin/busybox', 'sleep', '3600'],
          },
        ],
      },
    });
    await waitAppRunning(c, NS, 'app-gc');
    const events = await eventLines(c, NS);
    assert.match(
      events,
      new RegExp(
        `Pod/app-gc Pulled: Container image "${byTag.replace(/[.:/@]/g, '\\$&')}" already present on machine`,
      ),
      events,
    );
    assert.equal(c.proxy.bytes(blobs), 0, 'no registry blob bytes for the pod either');
  });
});
