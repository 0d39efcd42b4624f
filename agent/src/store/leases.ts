import type { Digest } from '../../../oci/src/digest.js';

/**
 * In-process leases on digests: what a running job (or a mirror read, or a re-warm)
 * needs and the garbage collector must not delete. A lease is counted, so two jobs that
 * share a layer each hold it and the layer is protected until both release it.
 *
 * Checks are synchronous on purpose: the collector asks `isLeased` immediately before
 * each deletion, and a job adds its blob digests synchronously (from a progress
 * callback) before it looks for them in the store, so there is no await between a
 * job's lease and its existence check for the collector to slip into.
 */
export class LeaseSet {
  readonly #counts = new Map<Digest, number>();

  /**
   * Takes a lease on every digest in `digests`; returns a function that releases
   * exactly those leases (idempotent). Digests added later with the returned
   * handle's `add` are released together.
   */
  acquire(digests: Iterable<Digest> = []): Lease {
    const held: Digest[] = [];
    let released = false;
    const add = (more: Iterable<Digest>): void => {
      if (released) return;
      for (const d of more) {
        this.#counts.set(d, (this.#counts.get(d) ?? 0) + 1);
        held.push(d);
      }
    };
    add(digests);
    return {
      add,
      release: () => {
        if (released) return;
        released = true;
        for (const d of held) {
          const n = (this.#counts.get(d) ?? 0) - 1;
          if (n <= 0) this.#counts.delete(d);
          else this.#counts.set(d, n);
        }
        held.length = 0;
      },
    };
  }

  isLeased(digest: Digest): boolean {
    return this.#counts.has(digest);
  }

  /** A snapshot of the leased digests. */
  digests(): Set<Digest> {
    return new Set(this.#counts.keys());
  }
}

/** A handle on leases taken with `LeaseSet.acquire`. */
export interface Lease {
  /** Adds more digests to this lease (no-op after release). */
  add(digests: Iterable<Digest>): void;
  /** Releases every digest this handle holds; safe to call twice. */
  release(): void;
}
