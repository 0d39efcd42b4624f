/**
 * Teardown for benchmarks that start daemons, network namespaces and temp dirs.
 *
 * Contract: `add()` registers a synchronous undo step; `run()` executes every step once,
 * last registered first (processes before the namespaces they live in, namespaces before
 * the dirs holding their config), logging but not stopping on a failing step. Steps are
 * synchronous on purpose so that the same list can run from a `process.on('exit')` hook,
 * where nothing asynchronous runs any more. `installSignalHandlers()` makes SIGINT/SIGTERM/
 * SIGHUP and a normal exit all end in `run()`.
 */
export class Cleanup {
  private readonly steps: { name: string; fn: () => void }[] = [];
  private ran = false;

  /** Registers an undo step; returns a function that runs and removes just that step. */
  add(name: string, fn: () => void): () => void {
    const step = { name, fn };
    this.steps.push(step);
    return () => {
      const i = this.steps.indexOf(step);
      if (i >= 0) {
        this.steps.splice(i, 1);
        this.exec(step);
      }
    };
  }

  run(): void {
    if (this.ran) return;
    this.ran = true;
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      this.exec(step);
    }
  }

  installSignalHandlers(): void {
    process.on('exit', () => this.run());
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      // `on`, not `once`: a second signal (say, forwarded by a wrapper as well as sent by
      // the terminal) must not fall back to the default action and skip the cleanup.
      process.on(sig, () => {
        console.error(`\n${sig}: cleaning up`);
        this.run();
        // The conventional exit status for "killed by signal N".
        process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
      });
    }
  }

  private exec(step: { name: string; fn: () => void }): void {
    try {
      step.fn();
    } catch (err) {
      console.error(`cleanup: ${step.name} failed: ${(err as Error).message}`);
    }
  }
}
