/**
 * The kube-prewarm CLI run from source (tsx), for bench/pod-start's child processes inside
 * the client network namespace: `node --import tsx bench/pod-start/cli.ts warm|serve …`.
 */
import { main } from '../../agent/src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
