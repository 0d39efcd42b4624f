/** Source entry point (`node --import tsx agent/src/cli/run.ts …`), used by tests and dev; bin/ runs the build. */
import { main } from './main.js';

process.exitCode = await main(process.argv.slice(2));
