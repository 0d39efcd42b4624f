#!/usr/bin/env node
// Entry point for the `kube-prewarm` command; the code lives in dist/ (built by `npm run build`,
// which `npm ci` runs through the `prepare` script). `operator` starts the controller and
// `webhooks` the registry webhook receiver (no Kubernetes credentials), `operator
// release-nodes` the one-shot taint removal of `helm uninstall`; every other
// subcommand (warm, serve, agent) belongs to the node-side CLI. They are separate programs
// that never import each other.
const [command] = process.argv.slice(2);

if (command === 'operator' && process.argv[3] === 'release-nodes') {
  // One-shot: the chart's pre-delete hook (removes the startup taint from every node).
  const { releaseNodesCommand } = await import('../dist/operator/src/release-nodes.js');
  process.exitCode = await releaseNodesCommand(process.argv.slice(4));
} else if (command === 'operator') {
  await import('../dist/operator/src/main.js');
} else if (command === 'webhooks') {
  await import('../dist/operator/src/webhooks-main.js');
} else {
  const { main } = await import('../dist/agent/src/cli/main.js');
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`kube-prewarm: ${err?.stack ?? err}\n`);
      process.exitCode = 1;
    },
  );
}
