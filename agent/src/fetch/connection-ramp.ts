/**
 * How many ranged connections one blob download may use, found by probing: start low,
 * double after each measurement window while the doubling raised throughput by at least
 * `gain`, then hold. A per-connection-capped path (a registry or CDN that limits each TCP
 * stream) ramps to the maximum; a link- or server-capped path stays low, which saves CPU
 * (every connection adds per-read overhead and out-of-order bytes to hold for hashing)
 * and the server's connection slots. A doubling that bought less than `undoBelow` is
 * given back, including the last one up to the maximum.
 *
 * Each window starts with `settleMs` whose bytes are not counted: connections just opened
 * are still in TCP slow start, and counting them would make the level before look slower
 * than it is (on a link-capped path, every doubling would then look like a gain).
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
    readonly settleMs = Math.floor(windowMs * 0.4),
    readonly gain = 1.2,
    readonly undoBelow = 1.05,
  ) {
    this.#limit = Math.max(1, Math.min(max, initial));
    this.#prevLimit = this.#limit;
    this.#windowStart = now + settleMs;
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
    if (this.#frozen || now <= this.#windowStart) return false;
    this.#windowBytes += bytes;
    const elapsed = now - this.#windowStart;
    if (elapsed < this.windowMs - this.settleMs) return false;
    const rate = this.#windowBytes / Math.max(1, elapsed);
    this.#windowStart = now + this.settleMs;
    this.#windowBytes = 0;
    const grew = this.#prevRate === 0 || rate >= this.#prevRate * this.gain;
    if (grew && this.#limit < this.max) {
      this.#prevRate = rate;
      this.#prevLimit = this.#limit;
      this.#limit = Math.min(this.max, this.#limit * 2);
      return true;
    }
    // No more growth, or at the maximum: hold here, or give back a doubling that bought nothing.
    this.#frozen = true;
    if (!grew && rate < this.#prevRate * this.undoBelow && this.#limit !== this.#prevLimit) {
      this.#limit = this.#prevLimit;
      return true;
    }
    return false;
  }
}
