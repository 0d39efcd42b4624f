/**
 * The Dockerfile cannot be built here (no container engine), so these tests check the
 * facts it relies on against the repository: it copies every source tree the build
 * compiles, the entrypoint it links resolves to a compiled module, the runtime assets
 * next to the sources are the ones the code loads, and every subcommand the chart runs
 * is one the `kube-prewarm` command knows.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
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
    assert.match(dockerfile, /ln -s \/app\/bin\/kube-prewarm\.js \/usr\/local\/bin\/kube-prewarm/);
    assert.match(dockerfile, /^ENTRYPOINT \["kube-prewarm"\]$/m);
    assert.match(dockerfile, /^FROM \$\{NODE_IMAGE\}$/m);
    assert.match(dockerfile, /^ARG NODE_IMAGE=node:22-bookworm-slim$/m);

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
    // cri-image-service.ts loads cri.proto from the source tree when run from dist/; the
    // Dockerfile copies every non-.ts file under the src trees into the image.
    assert.ok(existsSync(join(REPO_ROOT, 'agent/src/runtime/cri.proto')));
    const dockerfile = await readFile(join(REPO_ROOT, 'Dockerfile'), 'utf8');
    assert.match(
      dockerfile,
      /find oci\/src agent\/src operator\/src -type f ! -name '\*\.ts' -exec cp --parents/,
    );
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
