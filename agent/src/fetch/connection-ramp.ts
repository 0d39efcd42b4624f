/**
 * How many ranged connections one blob download may use, found by probing: start low,
 * double after each measurement window while the doubling raised throughput by at least
 * `gain`, then hold. A per-connection-capped path (a registry or CDN that limits each TCP
 * stream) ramps to the maximum; a link- or server-capped path stays low, which saves CPU
 * (every connection adds per-read overhead and out-of-order bytes to hold for hashing)
 * and the server's connection slots. A doubling that bought less than `undoBelow` is
 * given back.
 *
 * Pure bookkeeping: the caller reports bytes with a clock reading and applies the limit.
 */
export class ConnectionRamp {
  #limit: number;
  #prevLimit: number;
  #prevRate = 0;
  #windowStart: number;
  #windowBytes = 0;
  #frozen: boolean;

  constructor(
    initial: number,
    readonly max: number,
    readonly windowMs: number,
    now: number,
    readonly gain = 1.2,
    readonly undoBelow = 1.05,
  ) {
    this.#limit = Math.max(1, Math.min(max, initial));
    this.#prevLimit = this.#limit;
    this.#windowStart = now;
    this.#frozen = this.#limit >= max;
  }

  get limit(): number {
    return this.#limit;
  }

  /** True once the limit will not change again. */
  get frozen(): boolean {
    return this.#frozen;
  }

  /** Records `bytes` received by `now` (ms); returns true when the limit changed. */
  count(bytes: number, now: number): boolean {
    if (this.#frozen) return false;
    this.#windowBytes += bytes;
    const elapsed = now - this.#windowStart;
    if (elapsed < this.windowMs) return false;
    const rate = this.#windowBytes / elapsed;
    this.#windowStart = now;
    this.#windowBytes = 0;
    if (this.#prevRate === 0 || rate >= this.#prevRate * this.gain) {
      this.#prevRate = rate;
      this.#prevLimit = this.#limit;
      this.#limit = Math.min(this.max, this.#limit * 2);
      if (this.#limit >= this.max) this.#frozen = true;
      return true;
    }
    this.#frozen = true;
    if (rate < this.#prevRate * this.undoBelow && this.#limit !== this.#prevLimit) {
      this.#limit = this.#prevLimit;
      return true;
    }
    return false;
  }
}
