/**
 * The chart's hosts.toml installer (helm/kube-prewarm/files/hosts-toml.sh, run by the
 * agent container's postStart/preStop hooks), taken from the rendered ConfigMap and run
 * with the command lines the rendered DaemonSet gives it:
 * - file contents, idempotence, other owners' and hand-written files left alone, stale
 *   entries removed, invalid hosts refused;
 * - with a real containerd: an image pulled through the files lands in the node-local
 *   mirror (`kube-prewarm serve`), a second pull works with the registry stopped (served
 *   by the mirror alone), and after `uninstall` containerd no longer uses the mirror.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { type ContainerdHandle, startContainerd } from '../harness/containerd.js';
import { pushImage } from '../harness/images.js';
import { REPO_ROOT } from '../harness/kube.js';
import { type ManagedProcess, spawnProcess, waitForHttp } from '../harness/process.js';
import { type RegistryHandle, startRegistry } from '../harness/registry.js';
import { Cleanup, freePort, makeTempDir } from '../harness/tmp.js';
import { type K8sObject, NAMESPACE, one, RELEASE, render } from './render.js';

const execFileP = promisify(execFile);
const CERTS_IN_POD = '/etc/containerd/certs.d';

interface Hooks {
  script: string;
  /** postStart command, after `sh <script>`. */
  install: string[];
  /** preStop command, after `sh <script>`. */
  uninstall: string[];
}

/** The installer script and the exact hook commands of a rendered chart. */
async function hooksOf(values: unknown, dir: string): Promise<Hooks> {
  const objs = await render(values);
  const cm = one(objs, 'ConfigMap', '-agent-hosts');
  const ds: K8sObject = one(objs, 'DaemonSet', '-agent');
  const c = ds.spec.template.spec.containers[0];
  const post: string[] = c.lifecycle.postStart.exec.command;
  const pre: string[] = c.lifecycle.preStop.exec.command;
  assert.equal(post[0], 'sh');
  assert.equal(pre[0], 'sh');
  // The script path is the ConfigMap mounted into the container.
  const mount = c.volumeMounts.find((m: { mountPath: string }) => post[1]!.startsWith(`${m.mountPath}/`));
  const vol = ds.spec.template.spec.volumes.find((v: { name: string }) => v.name === mount?.name);
  assert.equal(vol?.configMap?.name, cm.metadata.name);
  const script = join(dir, 'hosts-toml.sh');
  await writeFile(script, cm.data['hosts-toml.sh']);
  return { script, install: post.slice(2), uninstall: pre.slice(2) };
}

/** Runs the script with `args`, the in-pod certs.d path replaced by `certsDir`. */
async function run(h: Hooks, args: string[], certsDir: string): Promise<{ stderr: string }> {
  const mapped = args.map((a) => (a === CERTS_IN_POD ? certsDir : a));
  const { stderr } = await execFileP('sh', [h.script, ...mapped]);
  return { stderr };
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const d of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, d.name);
    if (d.isDirectory()) for (const f of await listFiles(p)) out.push(join(d.name, f));
    else out.push(d.name);
  }
  return out.sort();
}

describe('hosts.toml installer', () => {
  const cleanup = new Cleanup();
  let dir: string;
  after(() => cleanup.run());
  before(async () => {
    dir = await makeTempDir('hosts-toml', cleanup);
  });

  test('writes one hosts.toml per registry: mirror first, the upstream as server', async () => {
    const h = await hooksOf(
      {
        agent: {
          mirror: {
            port: 5050,
            hostsToml: {
              registries: ['docker.io', 'registry.example.com:5000', 'insecure.local', '_default'],
            },
          },
          plainHttpRegistries: ['insecure.local'],
        },
      },
      dir,
    );
    const certs = join(dir, 'a');
    await run(h, h.install, certs);
    assert.deepEqual(await listFiles(certs), [
      '_default/hosts.toml',
      'docker.io/hosts.toml',
      'insecure.local/hosts.toml',
      'registry.example.com:5000/hosts.toml',
    ]);
    const docker = await readFile(join(certs, 'docker.io/hosts.toml'), 'utf8');
    assert.equal(
      docker,
      [
        `# managed-by: kube-prewarm (${NAMESPACE}/${RELEASE})`,
        '# The node-local kube-prewarm mirror first; the upstream when it fails.',
        'server = "https://registry-1.docker.io"',
        '',
        '[host."http://127.0.0.1:5050"]',
        '  capabilities = ["pull", "resolve"]',
        '',
      ].join('\n'),
    );
    assert.match(
      await readFile(join(certs, 'registry.example.com:5000/hosts.toml'), 'utf8'),
      /^server = "https:\/\/registry\.example\.com:5000"$/m,
    );
    assert.match(
      await readFile(join(certs, 'insecure.local/hosts.toml'), 'utf8'),
      /^server = "http:\/\/insecure\.local"$/m,
    );
    const def = await readFile(join(certs, '_default/hosts.toml'), 'utf8');
    assert.doesNotMatch(def, /^server/m, '_default falls back to each registry itself');
    assert.match(def, /^\[host\."http:\/\/127\.0\.0\.1:5050"\]$/m);

    // Idempotent: the same files again, no temp files left over.
    await run(h, h.install, certs);
    assert.equal(await readFile(join(certs, 'docker.io/hosts.toml'), 'utf8'), docker);
    assert.equal((await listFiles(certs)).length, 4);
  });

  test('never touches a hosts.toml it did not write; uninstall removes only its own', async () => {
    const h = await hooksOf(
      { agent: { mirror: { hostsToml: { registries: ['docker.io', 'ghcr.io', 'quay.io'] } } } },
      dir,
    );
    const certs = join(dir, 'b');
    await mkdir(join(certs, 'ghcr.io'), { recursive: true });
    const handWritten =
      'server = "https://ghcr.io"\n[host."https://corp-mirror.example"]\n  capabilities = ["pull"]\n';
    await writeFile(join(certs, 'ghcr.io/hosts.toml'), handWritten);
    await mkdir(join(certs, 'quay.io'), { recursive: true });
    const otherRelease = '# managed-by: kube-prewarm (other/release)\nserver = "https://quay.io"\n';
    await writeFile(join(certs, 'quay.io/hosts.toml'), otherRelease);

    const { stderr } = await run(h, h.install, certs);
    assert.match(stderr, /ghcr\.io\/hosts\.toml exists and was not written by kube-prewarm/);
    assert.equal(await readFile(join(certs, 'ghcr.io/hosts.toml'), 'utf8'), handWritten);
    assert.equal(await readFile(join(certs, 'quay.io/hosts.toml'), 'utf8'), otherRelease);
    assert.match(await readFile(join(certs, 'docker.io/hosts.toml'), 'utf8'), /managed-by: kube-prewarm/);

    await run(h, h.uninstall, certs);
    assert.equal(existsSync(join(certs, 'docker.io')), false, 'our file and its directory are gone');
    assert.equal(await readFile(join(certs, 'ghcr.io/hosts.toml'), 'utf8'), handWritten);
    assert.equal(await readFile(join(certs, 'quay.io/hosts.toml'), 'utf8'), otherRelease);
    await run(h, h.uninstall, certs); // twice is fine (preStop may run on a pod that never started)
  });

  test('a registry dropped from the list loses its file on the next install', async () => {
    const certs = join(dir, 'c');
    const before = await hooksOf(
      { agent: { mirror: { hostsToml: { registries: ['docker.io', 'ghcr.io'] } } } },
      dir,
    );
    await run(before, before.install, certs);
    const afterUpgrade = await hooksOf(
      { agent: { mirror: { hostsToml: { registries: ['docker.io'] } } } },
      dir,
    );
    await run(afterUpgrade, afterUpgrade.install, certs);
    assert.deepEqual(await listFiles(certs), ['docker.io/hosts.toml']);
  });

  test('refuses hosts that would escape the directory or glob', async () => {
    const h = await hooksOf({}, dir);
    const certs = join(dir, 'd');
    const args = [...h.install];
    args[4] = '../escape,*,ok.example.com,a/b';
    const { stderr } = await run(h, args, certs);
    assert.match(stderr, /skipping invalid registry host '\.\.\/escape'/);
    assert.match(stderr, /skipping invalid registry host '\*'/);
    assert.match(stderr, /skipping invalid registry host 'a\/b'/);
    assert.deepEqual(await listFiles(certs), ['ok.example.com/hosts.toml']);
    assert.equal(existsSync(join(dir, 'escape')), false);
  });

  test('the chart refuses the installer without the host network', async () => {
    await assert.rejects(render({ agent: { hostNetwork: false } }), /needs agent\.hostNetwork/);
    const objs = await render({ agent: { hostNetwork: false, mirror: { hostsToml: { install: false } } } });
    assert.equal(one(objs, 'DaemonSet').spec.template.spec.containers[0].lifecycle, undefined);
  });
});

describe('hosts.toml with a real containerd and the node-local mirror', () => {
  const cleanup = new Cleanup();
  let registry: RegistryHandle;
  let containerd: ContainerdHandle;
  let mirror: ManagedProcess;
  let hooks: Hooks;
  let imageRef: string;
  let digestRef: string;
  after(() => cleanup.run());

  before(async () => {
    const dir = await makeTempDir('hosts-e2e', cleanup);
    registry = await startRegistry();
    cleanup.defer(() => registry.close());
    const pushed = await pushImage(registry, {
      repository: 'team/app',
      tag: 'v1',
      layers: [
        { files: { 'etc/hello.txt': 'hello from kube-prewarm\n' } },
        { randomBytes: 256 * 1024, seed: 7 },
      ],
    });
    imageRef = pushed.ref;
    digestRef = pushed.digestRef;

    const mirrorPort = await freePort();
    mirror = await spawnProcess({
      name: 'kube-prewarm serve',
      command: process.execPath,
      args: [
        '--import',
        'tsx',
        'agent/src/cli/run.ts',
        'serve',
        '--store',
        join(dir, 'store'),
        '--listen',
        `127.0.0.1:${mirrorPort}`,
        '--no-fsync',
      ],
      cwd: REPO_ROOT,
      logPath: join(dir, 'mirror.log'),
    });
    cleanup.defer(async () => {
      await mirror.stop();
    });
    await waitForHttp(`http://127.0.0.1:${mirrorPort}/v2/`, { process: mirror, timeoutMs: 30_000 });

    containerd = await startContainerd();
    cleanup.defer(() => containerd.close());
    hooks = await hooksOf(
      {
        agent: {
          mirror: { port: mirrorPort, host: '127.0.0.1', hostsToml: { registries: [registry.host] } },
        },
      },
      dir,
    );
  });

  const pull = (ref = imageRef) =>
    containerd.ctr(['images', 'pull', '--hosts-dir', containerd.certsDir, ref]);
  const removeImages = () =>
    containerd.ctr(['images', 'rm', '--sync', imageRef, digestRef]).catch(() => undefined);

  test('containerd pulls through the mirror; with the registry down the mirror alone serves it', async () => {
    await run(hooks, hooks.install, containerd.certsDir);
    assert.ok(existsSync(join(containerd.certsDir, registry.host, 'hosts.toml')));
    await pull();
    // The pull went through the mirror, which stored what it streamed: stop the registry,
    // forget the image, pull it again by digest (a tag needs the registry or a prewarm
    // job's tag record; the content itself is all in the mirror's store now).
    await removeImages();
    await registry.stop();
    try {
      await pull(digestRef);
      const { stdout } = await containerd.ctr(['images', 'ls', '-q']);
      assert.ok(stdout.split('\n').includes(digestRef), `image listed after the mirror-only pull: ${stdout}`);
    } finally {
      await registry.start();
    }
  });

  test('after uninstall containerd no longer uses the mirror', async () => {
    await run(hooks, hooks.uninstall, containerd.certsDir);
    assert.equal(existsSync(join(containerd.certsDir, registry.host)), false);
    await removeImages();
    await registry.stop();
    try {
      await assert.rejects(
        pull(digestRef),
        /failed/,
        'without hosts.toml and with the registry down the pull fails',
      );
    } finally {
      await registry.start();
    }
    await pull(); // and straight from the registry it works
  });
});
