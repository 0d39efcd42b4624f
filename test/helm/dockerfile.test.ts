/**
 * The Dockerfile cannot be built here (no container engine), so these tests check the
 * facts it relies on against the repository: it copies every source tree the build
 * compiles, the entrypoint it links resolves to a compiled module, the runtime assets
 * next to the sources are the ones the code loads, and every subcommand the chart runs
 * is one the `kube-prewarm` command knows. And that it makes the image
 * scripts/build-image.sh makes (built and run in test/image/image.test.ts): the same Node
 * version, the same four layers staged by the same scripts/image/stage.sh commands, the
 * same npm flags, user, entrypoint and environment.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../harness/kube.js';
import { all, render } from './render.js';

const execFileP = promisify(execFile);

describe('Dockerfile', () => {
  test('copies every tree tsconfig.build.json compiles, plus bin/, and links the entrypoint', async () => {
    const dockerfile = await readFile(join(REPO_ROOT, 'Dockerfile'), 'utf8');
    const copies = [...dockerfile.matchAll(/^COPY (?!--from)(\S+) (\S+)$/gm)].map((m) => [m[1], m[2]]);
    const build = JSON.parse(await readFile(join(REPO_ROOT, 'tsconfig.build.json'), 'utf8')) as {
      include: string[];
    };
    for (const dir of build.include)
      assert.ok(
        copies.some(([src, dst]) => src === dir && dst === dir),
        `Dockerfile does not COPY ${dir} ${dir}`,
      );
    assert.ok(copies.some(([src]) => src === 'bin'));
    assert.match(dockerfile, /^RUN npm ci --ignore-scripts$/m);
    // The node layer (stage.sh node) links the command to the entrypoint script.
    const stage = await readFile(join(REPO_ROOT, 'scripts/image/stage.sh'), 'utf8');
    assert.match(stage, /ln -sfn \/app\/bin\/kube-prewarm\.js "\$out\/usr\/local\/bin\/kube-prewarm"/);
    assert.match(dockerfile, /^ENTRYPOINT \["kube-prewarm"\]$/m);
    assert.match(dockerfile, /^FROM \$\{NODE_IMAGE\} AS build$/m);

    // The entrypoint imports ../dist/<path>.js (dynamically): the build must produce each from <path>.ts.
    const bin = await readFile(join(REPO_ROOT, 'bin', 'kube-prewarm.js'), 'utf8');
    const targets = [...bin.matchAll(/import\('\.\.\/dist\/(.+?)\.js'\)/g)].map((m) => m[1] as string);
    assert.ok(targets.length >= 2, 'bin/kube-prewarm.js imports nothing from dist/');
    for (const target of targets) {
      assert.ok(existsSync(join(REPO_ROOT, `${target}.ts`)), `${target}.ts does not exist`);
      assert.ok(
        build.include.some((dir) => target.startsWith(`${dir}/`)),
        `${target}.ts is outside tsconfig.build.json`,
      );
    }
  });

  test('the runtime assets the code loads from the source tree exist and are not TypeScript', async () => {
    // cri-image-service.ts loads cri.proto from the source tree when run from dist/;
    // `stage.sh app` (the Dockerfile's and build-image.sh's app layer) copies every non-.ts
    // file under the compiled trees: run it on this checkout's dist/.
    assert.ok(existsSync(join(REPO_ROOT, 'agent/src/runtime/cri.proto')));
    const out = await mkdtemp(join(tmpdir(), 'stage-app-'));
    try {
      const dist = join(out, 'dist');
      await mkdir(join(dist, 'agent/src/cli'), { recursive: true });
      await writeFile(join(dist, 'agent/src/cli/main.js'), '');
      await execFileP('bash', ['scripts/image/stage.sh', 'app', join(out, 'layer'), REPO_ROOT, dist], {
        cwd: REPO_ROOT,
      });
      for (const p of [
        'agent/src/runtime/cri.proto',
        'agent/src/runtime/containerd-events.proto',
        'package.json',
        'bin/kube-prewarm.js',
        'dist/agent/src/cli/main.js',
      ])
        assert.ok(existsSync(join(out, 'layer/app', p)), `stage.sh app did not stage ${p}`);
      assert.ok(!existsSync(join(out, 'layer/app/agent/src/cli/main.ts')), 'TypeScript sources staged');
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });

  test('builds what scripts/build-image.sh builds: Node version, layers, npm flags, user, entrypoint', async () => {
    const dockerfile = await readFile(join(REPO_ROOT, 'Dockerfile'), 'utf8');
    const script = await readFile(join(REPO_ROOT, 'scripts/build-image.sh'), 'utf8');
    const nodeVersion = /^NODE_VERSION=(\d+\.\d+\.\d+)$/m.exec(script)?.[1];
    assert.ok(nodeVersion, 'build-image.sh pins NODE_VERSION');
    assert.match(nodeVersion, /^24\./, 'Node 24 LTS');
    assert.equal(/^ARG NODE_IMAGE=(\S+)$/m.exec(dockerfile)?.[1], `node:${nodeVersion}-bookworm-slim`);
    // The same stage.sh commands make the layers, copied into an empty image in the order
    // build-image.sh writes them: base, node, node_modules, app.
    assert.match(dockerfile, /bash \/stage\.sh rootfs kube-prewarm \/layers\/base \/debs$/m);
    assert.match(
      dockerfile,
      /apt-get download \$\(bash \/stage\.sh packages kube-prewarm \| cut -d'\|' -f1\)/,
    );
    assert.match(dockerfile, /bash scripts\/image\/stage\.sh app \/layers\/app \/src \/src\/dist/);
    assert.match(dockerfile, /bash scripts\/image\/stage\.sh node \/layers\/node \/usr\/local\/bin\/node$/m);
    assert.match(script, /"\$STAGE" rootfs "\$image"/);
    assert.match(script, /"\$STAGE" node /);
    assert.match(script, /"\$STAGE" app /);
    const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    assert.match(runtime, /^FROM scratch$/m);
    assert.deepEqual(
      [...runtime.matchAll(/^COPY --from=(\S+) (\S+) (\S+)$/gm)].map((m) => `${m[1]} ${m[2]} ${m[3]}`),
      ['base /layers/base/ /', 'build /layers/node/ /', 'deps /layers/deps/ /', 'build /layers/app/ /'],
    );
    assert.match(dockerfile, /^WORKDIR \/layers\/deps\/app$/m);
    const { stdout: flags } = await execFileP('bash', ['scripts/image/stage.sh', 'npm-ci-flags'], {
      cwd: REPO_ROOT,
    });
    assert.match(dockerfile, new RegExp(`npm ci ${flags.trim().replace(/[-]/g, '\\-')} \\\\$`, 'm'));
    assert.match(script, /npm ci \$NPM_CI_FLAGS /);
    assert.match(runtime, /^USER 65532:65532$/m);
    assert.match(runtime, /^CMD \["--help"\]$/m);
    assert.match(runtime, /NODE_ENV=production/);
    assert.match(script, /entrypoint='\["kube-prewarm"\]' cmd='\["--help"\]' user=65532:65532 workdir=\/app/);
    assert.match(runtime, /^WORKDIR \/app$/m);
  });

  const usage = async (): Promise<string> => {
    const { stdout } = await execFileP(
      process.execPath,
      ['--import', 'tsx', 'agent/src/cli/run.ts', '--help'],
      {
        cwd: REPO_ROOT,
      },
    );
    return stdout;
  };
  const commandsOfChart = async (): Promise<string[]> => {
    const objs = await render();
    const args = [...all(objs, 'Deployment'), ...all(objs, 'DaemonSet')]
      .filter((o) => o.metadata.labels?.['app.kubernetes.io/component'] !== 'redis')
      .map((o) => o.spec.template.spec.containers[0].args[0] as string);
    return args.sort();
  };

  test('the chart runs the agent with a subcommand the kube-prewarm command knows', async () => {
    assert.ok((await commandsOfChart()).includes('agent'));
    assert.match(await usage(), /^\s+agent\s/m);
  });

  test('the chart runs the operator with a subcommand the kube-prewarm command knows', async () => {
    assert.ok((await commandsOfChart()).includes('operator'));
    assert.match(await usage(), /^\s+operator\s/m);
    // bin/ dispatches `operator` to the controller's entry point (the node CLI never loads it).
    const bin = await readFile(join(REPO_ROOT, 'bin/kube-prewarm.js'), 'utf8');
    assert.match(bin, /command === 'operator'[\s\S]*import\('\.\.\/dist\/operator\/src\/main\.js'\)/);
  });
});
