/**
 * `npm run demo`: the README's first command. Starts a throwaway registry on 127.0.0.1
 * (Debian's docker-registry), pushes a demo image built from scratch (a small layer and a
 * 256 MiB incompressible one), then runs the real CLI: `kube-prewarm warm` into
 * ./.prewarm-store, and a second time to show that a warm store fetches nothing.
 * Set KP_DEMO_MIB to change the big layer's size.
 */
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { Cleanup, pushImage, startRegistry } from '../test/harness/index.js';

const cleanup = new Cleanup();
const mib = Number(process.env.KP_DEMO_MIB ?? 256);
const store = resolve('.prewarm-store');

function run(args: string[]): Promise<number> {
  process.stderr.write(`\n$ kube-prewarm ${args.join(' ')}\n`);
  const child = spawn(process.execPath, ['bin/kube-prewarm.js', ...args], { stdio: 'inherit' });
  return new Promise((res) => child.once('exit', (code) => res(code ?? 1)));
}

try {
  const registry = await startRegistry({ logLevel: 'warn' });
  cleanup.defer(() => registry.close());
  process.stderr.write(`demo: registry at ${registry.url}; building and pushing a ${mib} MiB image...\n`);
  const img = await pushImage(registry, {
    repository: 'demo/ml-runtime',
    tag: 'latest',
    layers: [
      { files: { 'etc/demo.txt': 'kube-prewarm demo\n' } },
      { randomBytes: mib * 1024 * 1024, seed: 42, fileName: 'model.bin' },
    ],
  });
  let code = await run(['warm', img.ref, '--store', store]);
  if (code === 0) code = await run(['warm', img.ref, '--store', store]);
  process.stderr.write(
    code === 0 ? `\ndemo: ${img.ref} is warm in ${store}\n` : `\ndemo: failed (exit ${code})\n`,
  );
  process.exitCode = code;
} finally {
  await cleanup.run();
}
