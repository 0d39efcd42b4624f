import type { BlobResponse } from '../../../oci/src/client.js';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';
import type { ByteRange } from '../store/ranges.js';
import type { BlobSource, BlobTarget } from './sources.js';

/**
 * Which source a blob's next request goes to: the first one in preference order (peers
 * first, the registry last) that has not failed this blob. A peer that fails once is not
 * asked again for this blob: it may be restarting, lagging, or hold a bad copy, and the
 * registry is always there. The registry is never skipped: its errors go to the caller's
 * retry loop (backoff, Retry-After), and when everything was skipped the last source is
 * still used.
 */
export class SourcePicker {
  readonly #sources: readonly BlobSource[];
  readonly #skipped = new Set<BlobSource>();

  constructor(sources: readonly BlobSource[]) {
    this.#sources = sources;
  }

  /** The source to ask now. Throws PW_ERR_INVALID_CONFIG when there is none at all. */
  pick(): BlobSource {
    const s = this.#sources.find((x) => !this.#skipped.has(x)) ?? this.#sources.at(-1);
    if (!s) throw new PrewarmError(ErrorCodes.INVALID_CONFIG, 'no blob source configured');
    return s;
  }

  /** Stops asking `source` for this blob when it is a peer (the registry is never skipped). */
  skipPeer(source: BlobSource): void {
    if (source.kind === 'peer') this.#skipped.add(source);
  }

  /** Stops asking any peer (after a digest mismatch that a peer's bytes may have caused). */
  skipAllPeers(): void {
    for (const s of this.#sources) this.skipPeer(s);
  }

  /**
   * Opens [range.start, range.end) of `target` at the preferred source, moving on to the
   * next source when a peer fails to answer. Throws the registry's error (or the abort).
   */
  async open(
    target: BlobTarget,
    range: ByteRange,
    signal: AbortSignal,
  ): Promise<{ res: BlobResponse; source: BlobSource }> {
    for (;;) {
      const source = this.pick();
      try {
        return { res: await source.open(target, { start: range.start, end: range.end - 1 }, signal), source };
      } catch (err) {
        // A peer already skipped is only asked because every source was: its error then
        // goes to the caller's retry loop like the registry's, instead of asking it again at once.
        if (source.kind === 'peer' && !signal.aborted && !this.#skipped.has(source)) {
          this.skipPeer(source);
          continue;
        }
        throw err;
      }
    }
  }
}
