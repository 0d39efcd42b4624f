/**
 * MirrorRoute: an unpack waits until containerd pulls the job's registry through the node
 * mirror (kube-prewarm's hosts.toml under config_path), on temp dirs with the installer
 * that the hosts-toml container uses. The end-to-end effect (the registry serves an image
 * once for the warm and nothing for the unpack of a node that just joined) is in
 * test/e2e/gating.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { HostsTomlInstaller } from '../../agent/src/runtime/hosts-installer.js';
import { MirrorRoute } from '../../agent/src/runtime/mirror-route.js';
import { Cleanup, makeTempDir } from '../harness/index.js';

const cleanup = new Cleanup();
after(() => cleanup.run());

const MIRROR = 'http://127.0.0.1:5050';

/** A MirrorRoute over a fresh certs.d for `registries` (polling every 20 ms, 60 s timeout). */
async function routeFor(
  registries: string[],
  timeoutMs = 60_000,
): Promise<{ dir: string; route: MirrorRoute }> {
  const dir = await makeTempDir('route-', cleanup);
  return { dir, route: new MirrorRoute({ configPath: dir, registries, timeoutMs, pollMs: 20 }) };
}

/** Writes kube-prewarm's hosts.toml for `registry` as the chart's installer does. */
const installOurs = (dir: string, registry: string) =>
  new HostsTomlInstaller({ configPath: dir, fsync: false }).install([{ registry, mirrors: [MIRROR] }]);

describe('MirrorRoute', () => {
  test('waits for the registry’s hosts.toml to be kube-prewarm’s, then says routed', async () => {
    const { dir, route } = await routeFor(['ghcr.io']);
    const waiting = route.wait('ghcr.io');
    // An administrator's file first (not ours: containerd would go to the registry), then ours.
    await mkdir(join(dir, 'ghcr.io'), { recursive: true });
    await writeFile(join(dir, 'ghcr.io', 'hosts.toml'), 'server = "https://ghcr.io"\n');
    let settled = false;
    void waiting.then(() => {
      settled = true;
    });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(settled, false, 'a foreign file does not count');
    await installOurs(dir, 'ghcr.io');
    const r = await waiting;
    assert.equal(r.outcome, 'routed');
    assert.equal(r.file, join(dir, 'ghcr.io', 'hosts.toml'));
    assert.ok(r.waitedMs >= 200, `waited ${r.waitedMs} ms`);
  });

  test('a registry no file is written for does not wait', async () => {
    const { route } = await routeFor(['ghcr.io']);
    assert.deepEqual(await route.wait('quay.io'), { outcome: 'unmanaged', waitedMs: 0 });
  });

  test('_default covers every other registry, unless it has a file of its own', async () => {
    const { dir, route } = await routeFor(['_default']);
    await installOurs(dir, '_default');
    const r = await route.wait('quay.io');
    assert.equal(r.outcome, 'routed');
    assert.equal(r.file, join(dir, '_default', 'hosts.toml'));
    await mkdir(join(dir, 'registry.internal:5000'), { recursive: true });
    await writeFile(
      join(dir, 'registry.internal:5000', 'hosts.toml'),
      'server = "https://registry.internal:5000"\n',
    );
    assert.equal((await route.wait('registry.internal:5000')).outcome, 'unmanaged');
  });

  test('gives up after the timeout with the file it waited for', async () => {
    const { dir, route } = await routeFor(['ghcr.io'], 100);
    const r = await route.wait('ghcr.io');
    assert.equal(r.outcome, 'timeout');
    assert.equal(r.file, join(dir, 'ghcr.io', 'hosts.toml'));
    assert.ok(r.waitedMs >= 100);
  });

  test('an abort ends the wait with the abort', async () => {
    const { route } = await routeFor(['ghcr.io']);
    const ac = new AbortController();
    const waiting = route.wait('ghcr.io', ac.signal);
    ac.abort(new Error('job cancelled'));
    await assert.rejects(waiting, /job cancelled/);
  });
});
