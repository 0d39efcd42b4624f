#!/usr/bin/env node
// Entry point for the `kube-prewarm` command; the code lives in dist/ (built by `npm run build`,
// which `npm ci` runs through the `prepare` script).
import { main } from '../dist/agent/src/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`kube-prewarm: ${err?.stack ?? err}\n`);
    process.exitCode = 1;
  },
);
