/**
 * How many ranged connections one blob download may use, found by probing: start low,
 * double after each measurement window while the doubling raised throughput by at least
 * `gain`, then hold. A per-connection-capped path (a registry or CDN that limits each TCP
 * stream) ramps to the maximum; a link- or server-capped path stays low, which saves CPU
 * (every connection adds per-read overhead and out-of-order bytes to hold for hashing)
 * and the server's connection slots. A doubling that bought less than `undoBelow` is
 * given back, including the last one up to the maximum; the ramp then probes down,
 * halving while the rate holds (within `holdWithin`) to a floor of `min(2, initial)`
 * connections (two, not one, so one stream's loss recovery does not stall the blob), and
 * steps back up once if a halving cost throughput. A link that one or two connections
 * fill ends there.
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
  /** Probing down: the best rate measured, which fewer connections must hold. */
  #downBase: number | undefined;
  readonly #floor: number;

  constructor(
    initial: number,
    readonly max: number,
    readonly windowMs: number,
    now: number,
    readonly settleMs = Math.floor(windowMs * 0.4),
    readonly gain = 1.2,
    readonly undoBelow = 1.05,
    readonly holdWithin = 0.95,
  ) {
    this.#limit = Math.max(1, Math.min(max, initial));
    this.#floor = Math.min(2, this.#limit);
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
    if (this.#downBase !== undefined) return this.#stepDown(rate);
    const grew = this.#prevRate === 0 || rate >= this.#prevRate * this.gain;
    if (grew && this.#limit < this.max) {
      this.#prevRate = rate;
      this.#prevLimit = this.#limit;
      this.#limit = Math.min(this.max, this.#limit * 2);
      return true;
    }
    if (grew || rate >= this.#prevRate * this.undoBelow) {
      // At the maximum and still growing, or a modest gain: hold here. (Otherwise the
      // last window followed a doubling, so #prevLimit is below #limit.)
      this.#frozen = true;
      return false;
    }
    // The doubling bought nothing: give it back, and see whether even fewer would do.
    const best = Math.max(rate, this.#prevRate);
    if (this.#prevLimit / 2 >= this.#floor) {
      this.#downBase = best;
      this.#limit = Math.floor(this.#prevLimit / 2);
    } else {
      this.#limit = this.#prevLimit;
      this.#frozen = true;
    }
    return true;
  }

  /** One probe-down window measured at the current (halved) limit. */
  #stepDown(rate: number): boolean {
    if (rate >= (this.#downBase ?? 0) * this.holdWithin) {
      if (this.#limit / 2 >= this.#floor) {
        this.#limit = Math.floor(this.#limit / 2);
        return true;
      }
      this.#frozen = true;
      return false;
    }
    // Fewer connections cost throughput: back to the last level that held it.
    this.#limit *= 2;
    this.#frozen = true;
    return true;
  }
}
