/**
 * A set of half-open byte ranges [start, end), kept sorted and merged. Used for the
 * ranges of a blob that are on disk, that are still to fetch, and that readers wait for.
 */
export interface ByteRange {
  start: number;
  end: number;
}

export class RangeSet {
  #ranges: ByteRange[] = [];

  constructor(ranges: Iterable<ByteRange> = []) {
    for (const r of ranges) this.add(r.start, r.end);
  }

  get ranges(): readonly ByteRange[] {
    return this.#ranges;
  }

  get isEmpty(): boolean {
    return this.#ranges.length === 0;
  }

  /** Total bytes covered. */
  get size(): number {
    let n = 0;
    for (const r of this.#ranges) n += r.end - r.start;
    return n;
  }

  add(start: number, end: number): void {
    if (end <= start) return;
    const out: ByteRange[] = [];
    let s = start;
    let e = end;
    let placed = false;
    for (const r of this.#ranges) {
      if (r.end < s) out.push(r);
      else if (r.start > e) {
        if (!placed) {
          out.push({ start: s, end: e });
          placed = true;
        }
        out.push(r);
      } else {
        s = Math.min(s, r.start);
        e = Math.max(e, r.end);
      }
    }
    if (!placed) out.push({ start: s, end: e });
    this.#ranges = out;
  }

  remove(start: number, end: number): void {
    if (end <= start) return;
    const out: ByteRange[] = [];
    for (const r of this.#ranges) {
      if (r.end <= start || r.start >= end) out.push(r);
      else {
        if (r.start < start) out.push({ start: r.start, end: start });
        if (r.end > end) out.push({ start: end, end: r.end });
      }
    }
    this.#ranges = out;
  }

  /** Whether every byte of [start, end) is in the set. */
  covers(start: number, end: number): boolean {
    if (end <= start) return true;
    return this.#ranges.some((r) => r.start <= start && r.end >= end);
  }

  /** End of the contiguous run that contains `offset`, or undefined when `offset` is not in the set. */
  runEnd(offset: number): number | undefined {
    for (const r of this.#ranges) if (r.start <= offset && offset < r.end) return r.end;
    return undefined;
  }

  /** The first range, if any. */
  first(): ByteRange | undefined {
    return this.#ranges[0];
  }

  /** The complement of this set within [0, size). */
  complement(size: number): RangeSet {
    const out = new RangeSet();
    let pos = 0;
    for (const r of this.#ranges) {
      if (r.start > pos) out.add(pos, Math.min(r.start, size));
      pos = Math.max(pos, r.end);
    }
    if (pos < size) out.add(pos, size);
    return out;
  }
}
