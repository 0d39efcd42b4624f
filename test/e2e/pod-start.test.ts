/**
 * The path users judge, on a real node: `helm install` of the chart (images built here
 * without Docker), one ImagePrewarm for an image of 256 MiB, then a Deployment using it.
 * The pod must start without a single blob byte from the registry (counted at the proxy
 * every pull crosses), in `cache` mode (containerd pulls from the node-local mirror) and in
 * `unpack` mode (the image is unpacked before the pod exists: kubelet reports it "already
 * present on machine").
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { pushImage } from '../harness/images.js';
import { type E2eEnv, prewarmPath, startE2e } from './env.js';
import {
  create,
  ensureNamespace,
  eventLines,
  sleeperDeployment,
  waitAppRunning,
  waitPrewarmReady,
} from './kube.js';

const MiB = 1024 * 1024;
const NS = 'team-a';
const BLOBS = /\/v2\/.+\/blobs\/sha256:/;

describe('a pod on a prewarmed node starts with 0 registry blob bytes', { timeout: 1_800_000 }, () => {
  let env: E2eEnv;
  let busybox: Buffer;
  before(async () => {
    env = await startE2e();
    busybox = await readFile('/bin/busybox');
    await ensureNamespace(env.cluster, NS);
  });
  after(async () => {
    await env?.close();
  });

  /** Blobs already on the node from an earlier test (the busybox layer is shared). */
  const onNode = new Set<string>();
  /** Pushes a 256 MiB image of its own (busybox + incompressible data); returns the bytes of its blobs not yet on the node. */
  const pushApp = async (repository: string, seed: number) => {
    const img = await pushImage(env.cluster.registry, {
      repository,
      tag: 'v1',
      layers: [
        { files: { 'bin/busybox': busybox }, executables: ['bin/busybox'] },
        { randomBytes: 256 * MiB, seed },
      ],
    });
    const m = img.manifests[0]!;
    let fresh = 0;
    for (const b of [m.config, ...m.layers]) {
      if (!onNode.has(b.digest)) fresh += b.size;
      onNode.add(b.digest);
    }
    return fresh;
  };

  for (const mode of ['cache', 'unpack'] as const) {
    test(`${mode} mode`, async () => {
      const c = env.cluster;
      const repository = `team/app-${mode}`;
      const size = await pushApp(repository, mode === 'cache' ? 1 : 2);
      const ref = `${c.registryHost}/${repository}:v1`;

      c.proxy.resetStats();
      await create(c, prewarmPath(NS), {
        apiVersion: 'prewarm.kube-prewarm.io/v1alpha1',
        kind: 'ImagePrewarm',
        metadata: { name: `app-${mode}`, namespace: NS },
        spec: { images: [{ repository: `${c.registryHost}/${repository}`, tag: 'v1' }], mode },
      });
      const status = await waitPrewarmReady(c, NS, `app-${mode}`);
      assert.equal(status.warmNodes, 1);
      const warmBytes = c.proxy.bytes(BLOBS);
      // The agent fetched the image once: every blob byte, none twice (ranges may overlap a
      // retried chunk, never a whole blob).
      assert.ok(
        warmBytes >= size && warmBytes < size * 1.1,
        `prewarm fetched ${warmBytes} B of a ${size} B image`,
      );
      if (mode === 'unpack') {
        const { stdout } = await c.nodes[0]!.containerd.ctr(['images', 'ls', '-q']);
        assert.ok(stdout.split('\n').includes(ref), `containerd has ${ref} before any pod: ${stdout}`);
      }

      c.proxy.resetStats();
      await create(
        c,
        `/apis/apps/v1/namespaces/${NS}/deployments`,
        sleeperDeployment(`app-${mode}`, NS, ref),
      );
      await waitAppRunning(c, NS, `app-${mode}`);
      const blobRequests = c.proxy.stats.log.filter((e) => BLOBS.test(e.path));
      assert.equal(
        c.proxy.bytes(BLOBS),
        0,
        `registry blob requests during the pod start: ${JSON.stringify(blobRequests, null, 1)}`,
      );
      const events = await eventLines(c, NS);
      if (mode === 'unpack')
        assert.match(
          events,
          new RegExp(
            `Pod/app-${mode}-\\S+ Pulled: Container image "${ref.replace(/[.:/]/g, '\\$&')}" already present on machine`,
          ),
        );
      else assert.match(events, new RegExp(`Pod/app-${mode}-\\S+ Pulled: Successfully pulled image`));
    });
  }
});
