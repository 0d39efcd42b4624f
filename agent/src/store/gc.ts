import type { Digest } from '../../../oci/src/digest.js';
import type { BlobInfo, BlobStore, ImageRecord } from './blob-store.js';
import { budgetBytes, type DiskBudget, type FsSpace, fsSpace } from './disk-space.js';
import type { LeaseSet } from './leases.js';
import { digestClosure, type PinSource } from './pins.js';

/** The store operations garbage collection needs beyond `BlobStore` (FsBlobStore has them). */
export interface GcStore extends BlobStore {
  readonly root: string;
  listIngests(): Promise<{ digest: Digest; modifiedAt: number; bytes: number }[]>;
  removeIngest(digest: Digest): Promise<void>;
}

export interface GarbageCollectorOptions {
  budget: DiskBudget;
  /**
   * A periodic pass that finds the store over budget evicts down to this share of the
   * budget, so the next download does not immediately trigger another pass. Default 0.9.
   */
  lowWaterRatio?: number;
  /** Partial downloads not written for this long, and not in flight, are removed. Default 24 h. */
  staleIngestMs?: number;
  /** Free space left on the filesystem beyond what downloads need (for logs, records, Redis AOF on a shared disk). Default 16 MiB. */
  reserveBytes?: number;
  /** True while a download of `digest` is in flight (its ingest must stay). Default: never. */
  inflight?: (digest: Digest) => boolean;
  /** Clock (ms since epoch). Default `Date.now`. */
  now?: () => number;
  /** Filesystem space probe. Default statfs(2) on the store root. */
  space?: (path: string) => Promise<FsSpace>;
  /** Called with every pass's report (metrics, logs). */
  onReport?: (report: GcReport) => void;
}

/** Blobs a job is about to download, so room is made (and reserved) for what is not yet on disk. */
export interface BlobWant {
  digest: Digest;
  size: number;
}

export interface CollectRequest {
  /** Why this pass runs (`periodic`, `job`, `disk-full`, `startup`), for logs and metrics. */
  reason: string;
  /** Make room for these blobs (what is committed or partly downloaded counts as present). */
  want?: readonly BlobWant[];
  /** Also drop unleased partial downloads that are not stale yet when room is still short. Default true when `want` is given. */
  dropPartials?: boolean;
}

/** One image evicted by a pass. */
export interface EvictedImage {
  repository: string;
  digest: Digest;
  platform: string;
}

export interface GcReport {
  reason: string;
  /** False when the pin source failed: nothing was evicted (only stale partial downloads removed). */
  pinsKnown: boolean;
  budgetBytes: number;
  /** Blob bytes plus partial-download bytes before and after the pass. */
  usageBefore: number;
  usageAfter: number;
  /** Bytes still to download for this request and for other jobs' reservations. */
  needBytes: number;
  /** Bytes of protected content (pinned or leased) found in the store. */
  protectedBytes: number;
  /** Filesystem bytes available after the pass. */
  availableBytes: number;
  evictedImages: EvictedImage[];
  evictedBlobs: number;
  freedBytes: number;
  removedIngests: number;
  /** True when usage + need fits the budget and the filesystem has room for the need. */
  satisfied: boolean;
}

/** Room reserved for a job's downloads; release it when the job ends. */
export interface Reservation {
  readonly report: GcReport;
  release(): void;
}

interface Unit {
  lastUsed: number;
  record?: ImageRecord;
  blob?: BlobInfo;
}

/**
 * Keeps the store within its disk budget with least-recently-used eviction.
 *
 * Never evicted: anything reachable from a pinned digest (the pin source: live
 * ImagePrewarm jobs of this node) or from a leased one (jobs in flight, re-warms), and
 * any download in flight. When the pins cannot be read, nothing is evicted at all —
 * an unknown pin set is treated as "everything pinned".
 *
 * Eviction unit: an unpinned image record (its blobs are deleted unless another
 * remaining record or a pin still needs them) or a blob no record references (e.g.
 * left by a failed job, or cached by the mirror). Units go oldest first by last use
 * (the newest of the record's warm time and the access times of its image manifest
 * and of its blobs no other record shares; the mirror touches what it serves). The record is
 * deleted before its blobs, so a crash mid-eviction leaves orphan blobs (collected
 * later), never a record pointing at missing blobs.
 *
 * Passes are serialised; `reserve` accounts for downloads other jobs have reserved,
 * so parallel jobs do not each count the same free space.
 */
export class GarbageCollector {
  readonly #store: GcStore;
  readonly #leases: LeaseSet;
  readonly #pins: PinSource;
  readonly #opts: Required<Omit<GarbageCollectorOptions, 'budget'>> & { budget: DiskBudget };
  readonly #reservations = new Map<number, readonly BlobWant[]>();
  #nextReservation = 1;
  #chain: Promise<unknown> = Promise.resolve();

  constructor(store: GcStore, leases: LeaseSet, pins: PinSource, opts: GarbageCollectorOptions) {
    this.#store = store;
    this.#leases = leases;
    this.#pins = pins;
    this.#opts = {
      budget: opts.budget,
      lowWaterRatio: opts.lowWaterRatio ?? 0.9,
      staleIngestMs: opts.staleIngestMs ?? 24 * 3600_000,
      reserveBytes: opts.reserveBytes ?? 16 * 1024 * 1024,
      inflight: opts.inflight ?? (() => false),
      now: opts.now ?? Date.now,
      space: opts.space ?? fsSpace,
      onReport: opts.onReport ?? (() => undefined),
    };
  }

  /**
   * One pass: removes stale partial downloads, then evicts unprotected images and blobs
   * (least recently used first) until the store fits its budget — down to the low-water
   * mark when it was over budget, or with room for `want` when given. Never throws for
   * a pin-source failure (see `GcReport.pinsKnown`); throws on filesystem errors.
   */
  collect(req: CollectRequest): Promise<GcReport> {
    return this.#serial(() => this.#collect(req));
  }

  /**
   * Makes room for `want` like `collect` and, when the room is there, reserves it until
   * `release()`. When not satisfied nothing is reserved (the report says why).
   */
  reserve(want: readonly BlobWant[], reason = 'job'): Promise<Reservation> {
    return this.#serial(async () => {
      const report = await this.#collect({ reason, want });
      if (!report.satisfied) return { report, release: () => undefined };
      const id = this.#nextReservation++;
      this.#reservations.set(id, want);
      return { report, release: () => this.#reservations.delete(id) };
    });
  }

  /** Blob and partial-download bytes in the store now, and the budget for its filesystem. */
  async usage(): Promise<{
    usedBytes: number;
    blobs: number;
    blobBytes: number;
    ingestBytes: number;
    budgetBytes: number;
  }> {
    const blobs = await collectBlobs(this.#store);
    const ingests = await this.#store.listIngests();
    const blobBytes = sum(blobs.values(), (b) => b.size);
    const ingestBytes = sum(ingests, (i) => i.bytes);
    const space = await this.#opts.space(this.#store.root);
    return {
      usedBytes: blobBytes + ingestBytes,
      blobs: blobs.size,
      blobBytes,
      ingestBytes,
      budgetBytes: budgetBytes(this.#opts.budget, space.totalBytes),
    };
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(fn, fn);
    this.#chain = run.catch(() => undefined);
    return run;
  }

  async #collect(req: CollectRequest): Promise<GcReport> {
    const store = this.#store;
    const now = this.#opts.now();
    const blobs = await collectBlobs(store);
    let ingests = await store.listIngests();
    const records = await store.listImages();
    const space = await this.#opts.space(store.root);
    const budget = budgetBytes(this.#opts.budget, space.totalBytes);
    let usage = sum(blobs.values(), (b) => b.size) + sum(ingests, (i) => i.bytes);
    const usageBefore = usage;
    let available = space.availableBytes;
    const report: GcReport = {
      reason: req.reason,
      pinsKnown: true,
      budgetBytes: budget,
      usageBefore,
      usageAfter: usage,
      needBytes: 0,
      protectedBytes: 0,
      availableBytes: available,
      evictedImages: [],
      evictedBlobs: 0,
      freedBytes: 0,
      removedIngests: 0,
      satisfied: false,
    };

    const busy = (d: Digest) => this.#leases.isLeased(d) || this.#opts.inflight(d);
    const removed = new Set<Digest>();
    const removeIngest = async (i: { digest: Digest; bytes: number }) => {
      if (busy(i.digest)) return;
      await store.removeIngest(i.digest);
      removed.add(i.digest);
      usage -= i.bytes;
      available += i.bytes;
      report.removedIngests++;
    };
    // 1. Partial downloads nobody is running: stale ones, and ones whose blob is already committed.
    for (const i of ingests) {
      if (blobs.has(i.digest) || now - i.modifiedAt > this.#opts.staleIngestMs) await removeIngest(i);
    }
    ingests = ingests.filter((i) => !removed.has(i.digest));

    // 2. What must stay: the closure of pinned and leased digests.
    let pinned: ReadonlySet<Digest> | undefined;
    try {
      pinned = await this.#pins.pinned();
    } catch {
      report.pinsKnown = false;
    }
    const leased = this.#leases.digests();
    const keep = await digestClosure(store, [...(pinned ?? []), ...leased], records);
    for (const d of leased) keep.add(d);
    report.protectedBytes = sum(blobs.values(), (b) => (keep.has(b.digest) ? b.size : 0));

    // 3. How much room is needed: this request's downloads and other jobs' reservations.
    const ingestBytes = new Map(ingests.map((i) => [i.digest, i.bytes]));
    const wanted = new Map<Digest, number>();
    for (const w of [...[...this.#reservations.values()].flat(), ...(req.want ?? [])])
      wanted.set(w.digest, w.size);
    let need = 0;
    for (const [d, size] of wanted) {
      if (!blobs.has(d)) need += Math.max(0, size - (ingestBytes.get(d) ?? 0));
    }
    report.needBytes = need;
    const overBudget = usage > budget;
    const limit = req.want ? budget - need : overBudget ? budget * this.#opts.lowWaterRatio : budget;
    const fits = () => usage <= limit && available - need >= (req.want ? this.#opts.reserveBytes : 0);

    // 4. Evict least recently used units until it fits — unless even evicting everything
    // evictable could not make it fit: then evicting would only destroy warm images for nothing.
    const wantedSet = new Set(req.want?.map((w) => w.digest));
    const droppable = req.dropPartials ?? req.want !== undefined;
    const evictable =
      sum(blobs.values(), (b) => (keep.has(b.digest) || busy(b.digest) ? 0 : b.size)) +
      (droppable ? sum(ingests, (i) => (busy(i.digest) || wantedSet.has(i.digest) ? 0 : i.bytes)) : 0);
    // A periodic pass evicts what it can even when the goal is out of reach (pins exceed it).
    const reachable =
      req.want === undefined ||
      (usage - evictable <= limit && available + evictable - need >= this.#opts.reserveBytes);
    if (!fits() && report.pinsKnown && reachable) {
      const units = this.#units(blobs, records, keep);
      const remaining = new Set(records);
      for (const unit of units) {
        if (fits()) break;
        if (unit.record) {
          const r = unit.record;
          remaining.delete(r);
          await store.deleteImage(r);
          report.evictedImages.push({ repository: r.repository, digest: r.digest, platform: r.platform });
          const stillNeeded = new Set<Digest>();
          for (const o of remaining) for (const d of [...o.manifests, ...o.blobs]) stillNeeded.add(d);
          for (const d of new Set([...r.manifests, ...r.blobs])) {
            const info = blobs.get(d);
            if (!info || stillNeeded.has(d) || keep.has(d)) continue;
            if (await this.#deleteBlob(info, busy)) {
              blobs.delete(d);
              usage -= info.size;
              available += info.size;
              report.evictedBlobs++;
              report.freedBytes += info.size;
            }
          }
        } else if (unit.blob && blobs.has(unit.blob.digest)) {
          const info = unit.blob;
          if (await this.#deleteBlob(info, busy)) {
            blobs.delete(info.digest);
            usage -= info.size;
            available += info.size;
            report.evictedBlobs++;
            report.freedBytes += info.size;
          }
        }
      }
    }
    // 5. Still short: partial downloads of jobs not running now go too (oldest first).
    if (!fits() && droppable && report.pinsKnown && reachable) {
      for (const i of [...ingests].sort((a, b) => a.modifiedAt - b.modifiedAt)) {
        if (fits()) break;
        if (!wantedSet.has(i.digest)) await removeIngest(i);
      }
    }
    report.usageAfter = usage;
    report.availableBytes = available;
    report.satisfied = fits();
    this.#opts.onReport(report);
    return report;
  }

  /** Evictable units, least recently used first. */
  #units(blobs: Map<Digest, BlobInfo>, records: readonly ImageRecord[], keep: Set<Digest>): Unit[] {
    const units: Unit[] = [];
    const refs = new Map<Digest, number>();
    for (const r of records)
      for (const d of new Set([...r.manifests, ...r.blobs])) refs.set(d, (refs.get(d) ?? 0) + 1);
    for (const r of records) {
      if (keep.has(r.digest) || keep.has(r.manifestDigest)) continue;
      // Last use: the warm, or a read of its image manifest or of a blob no other image
      // shares (a shared layer's reads would make every image holding it look recent).
      let lastUsed = r.warmedAt;
      for (const d of [r.manifestDigest, ...r.blobs])
        if (d === r.manifestDigest || refs.get(d) === 1)
          lastUsed = Math.max(lastUsed, blobs.get(d)?.accessedAt ?? 0);
      units.push({ lastUsed, record: r });
    }
    for (const b of blobs.values()) {
      if (!refs.has(b.digest) && !keep.has(b.digest)) units.push({ lastUsed: b.accessedAt, blob: b });
    }
    return units.sort((a, b) => a.lastUsed - b.lastUsed);
  }

  async #deleteBlob(info: BlobInfo, busy: (d: Digest) => boolean): Promise<boolean> {
    // Checked right before the unlink: a job may have leased it since the pass began.
    if (busy(info.digest)) return false;
    return this.#store.delete(info.digest);
  }
}

async function collectBlobs(store: BlobStore): Promise<Map<Digest, BlobInfo>> {
  const out = new Map<Digest, BlobInfo>();
  for await (const b of store.list()) out.set(b.digest, b);
  return out;
}

function sum<T>(items: Iterable<T>, f: (x: T) => number): number {
  let n = 0;
  for (const x of items) n += f(x);
  return n;
}
