/**
 * Startup-first warming for images with eStargz layers: probe each layer's footer and TOC,
 * fetch every layer's startup region (prefetch region, TOC, footer) before any layer's
 * bulk, verify those regions on disk chunk by chunk, and say when the image is
 * startup-ready: every eStargz layer's startup region verified, every other blob (config,
 * plain layers) committed. The image warmer drives it (see ImageWarmer.warm).
 */

import { eachLimited } from '../../../oci/src/concurrency.js';
import type { Digest } from '../../../oci/src/digest.js';
import { ErrorCodes, isPrewarmError, PrewarmError } from '../../../oci/src/errors.js';
import type { Descriptor } from '../../../oci/src/manifest.js';
import type { BlobStore } from '../store/blob-store.js';
import {
  type EstargzLayout,
  type PlainReason,
  type ProbeOptions,
  probeEstargz,
  type RangeReader,
} from './estargz.js';
import { verifyStartupRegion } from './estargz-verify.js';
import type { Fetcher, FetchOptions } from './fetcher.js';
import type { BlobSource, BlobTarget } from './sources.js';

export interface StartupFirstOptions {
  fetcher: Fetcher;
  store: BlobStore;
  /** Sources for footer and TOC reads, in preference order (peers first, registry last). */
  sourcesFor: (digest: Digest) => Promise<BlobSource[]>;
  /** The fetch target of a descriptor. */
  target: (d: Descriptor) => BlobTarget;
  signal?: AbortSignal;
  probe?: ProbeOptions;
  /** Footer/TOC probes at once. Default 4. */
  probeConcurrency?: number;
}

/** What startup-first did for one warm (for results, logs and tests). */
export interface StartupSummary {
  /** Layers fetched startup-first with a verified TOC. */
  estargzLayers: Digest[];
  /** Layers handled as plain blobs, and why (`not-gzip` and `no-annotation` are not listed). */
  plain: { digest: Digest; reason: PlainReason | 'probe-failed' | 'verify-failed'; detail?: string }[];
  /** ms from the warm's start of planning to startup-ready; undefined when it was not reported. */
  readyAfterMs?: number;
}

type LayerState = 'pending' | 'verifying' | 'verified' | 'failed';

interface EstargzLayer {
  index: number;
  digest: Digest;
  layout: EstargzLayout;
  state: LayerState;
  /** Lifts the hold on the rest of the blob. */
  release: () => void;
  held: Promise<void>;
  /** The download started by `begin`, once started. */
  running?: Promise<unknown>;
}

/**
 * One warm's startup-first plan. Create with `StartupFirst.plan` (undefined when no layer
 * is eStargz, so nothing changes for plain images); then `begin` starts the eStargz
 * downloads with their startup ranges first and the rest held, `run(i)` is what a blob
 * worker awaits for descriptor `i`, and `close` lifts every hold (call it in a finally).
 */
export class StartupFirst {
  readonly summary: StartupSummary;
  /** Descriptor indexes in fetch order: config and plain layers first, then eStargz layers. */
  readonly order: number[];
  readonly #opts: StartupFirstOptions;
  readonly #layers: Map<number, EstargzLayer>;
  /** Descriptor index → index of the first descriptor with the same digest. */
  readonly #alias: number[];
  readonly #done: boolean[];
  readonly #started = performance.now();
  readonly #settled: Promise<void>;
  #settle!: () => void;
  #ready = false;
  #onReady: () => void = () => undefined;

  private constructor(
    opts: StartupFirstOptions,
    descriptors: readonly Descriptor[],
    layers: Map<number, EstargzLayer>,
    summary: StartupSummary,
  ) {
    this.#opts = opts;
    this.#layers = layers;
    this.summary = summary;
    const first = new Map<Digest, number>();
    this.#alias = descriptors.map((d, i) => {
      const f = first.get(d.digest);
      if (f !== undefined) return f;
      first.set(d.digest, i);
      return i;
    });
    this.#done = descriptors.map(() => false);
    const idx = descriptors.map((_, i) => i);
    const isEstargz = (i: number) => this.#layers.has(this.#alias[i] as number);
    this.order = [...idx.filter((i) => !isEstargz(i)), ...idx.filter(isEstargz)];
    this.#settled = new Promise((resolve) => {
      this.#settle = resolve;
    });
    this.#checkSettled();
  }

  /**
   * Probes the layers of `descriptors` (index 0 is the config) that are not yet in the
   * store. Resolves to undefined when none is an eStargz layer with a TOC that can order
   * the download. Probe failures other than an abort make a layer plain.
   */
  static async plan(
    descriptors: readonly Descriptor[],
    opts: StartupFirstOptions,
  ): Promise<StartupFirst | undefined> {
    const summary: StartupSummary = { estargzLayers: [], plain: [] };
    const layers = new Map<number, EstargzLayer>();
    const seen = new Set<Digest>();
    const todo: number[] = [];
    for (let i = 1; i < descriptors.length; i++) {
      const d = descriptors[i] as Descriptor;
      if (seen.has(d.digest)) continue;
      seen.add(d.digest);
      todo.push(i);
    }
    await eachLimited(todo, opts.probeConcurrency ?? 4, async (i) => {
      const d = descriptors[i] as Descriptor;
      if (await opts.store.stat(d.digest)) return;
      let probe: Awaited<ReturnType<typeof probeEstargz>>;
      try {
        const sources = await opts.sourcesFor(d.digest);
        probe = await probeEstargz(d, rangeReader(sources, opts.target(d), opts.signal), opts.probe);
      } catch (err) {
        if (opts.signal?.aborted || isPrewarmError(err, ErrorCodes.ABORTED)) throw err;
        summary.plain.push({ digest: d.digest, reason: 'probe-failed', detail: (err as Error).message });
        return;
      }
      if (probe.kind === 'plain') {
        if (probe.reason !== 'not-gzip' && probe.reason !== 'no-annotation')
          summary.plain.push({
            digest: d.digest,
            reason: probe.reason,
            ...(probe.detail ? { detail: probe.detail } : {}),
          });
        return;
      }
      let release!: () => void;
      const held = new Promise<void>((resolve) => {
        release = resolve;
      });
      const layout = probe.layout;
      layers.set(i, {
        index: i,
        digest: d.digest,
        layout,
        // An unverified TOC orders the download but never makes the layer startup-ready.
        state: layout.unverifiable === undefined ? 'pending' : 'failed',
        release,
        held,
      });
      if (layout.unverifiable === undefined) summary.estargzLayers.push(d.digest);
      else summary.plain.push({ digest: d.digest, reason: 'verify-failed', detail: layout.unverifiable });
    });
    if (layers.size === 0) return undefined;
    return new StartupFirst(opts, descriptors, layers, summary);
  }

  /** Called once, synchronously, when the image becomes startup-ready before it is fully warm. */
  set onReady(fn: () => void) {
    this.#onReady = fn;
  }

  /** Fetch options that put descriptor `i`'s startup region first and hold the rest. */
  fetchOptions(i: number): Pick<FetchOptions, 'priority'> {
    // A repeat of a layer gets its first occurrence's options: whichever of the two fetches
    // registers the shared download first, it starts with the startup ranges and the hold.
    const l = this.#layers.get(this.#alias[i] as number);
    if (!l) return {};
    return { priority: { ranges: l.layout.startupRanges, holdRestUntil: l.held } };
  }

  /**
   * Starts every eStargz layer's download at once through `fetchOne` (which must pass
   * `fetchOptions(i)` and report `progress(i)` / `done(i)`), so their startup regions
   * share the link before any bulk.
   */
  begin(fetchOne: (i: number) => Promise<unknown>): void {
    for (const l of this.#layers.values()) {
      const p = fetchOne(l.index);
      l.running = p;
      // A failed download settles its layer (the worker awaiting it reports the error).
      p.catch(() => {
        if (l.state === 'pending' || l.state === 'verifying') l.state = 'failed';
        this.#checkSettled();
      });
    }
  }

  /**
   * What a blob worker awaits for descriptor `i`: for an eStargz layer, once every startup
   * region is settled, lifts its hold and awaits the download `begin` started; undefined
   * for other descriptors (the worker fetches them itself).
   */
  run(i: number): Promise<unknown> | undefined {
    const l = this.#layers.get(i);
    if (!l?.running) return undefined;
    const running = l.running;
    return this.#settled.then(() => {
      l.release();
      return running;
    });
  }

  /** Call on every progress of descriptor `i`'s download: verifies its startup region once it is on disk. */
  progress(i: number): void {
    const l = this.#layers.get(i);
    if (l?.state !== 'pending') return;
    const blob = this.#opts.fetcher.inflight(l.digest);
    if (!blob || !l.layout.startupRanges.every((r) => blob.written.covers(r.start, r.end))) return;
    l.state = 'verifying';
    const read: RangeReader = (start, end) => blob.read(start, end - start);
    verifyStartupRegion(l.layout, read).then(
      (check) => {
        if (l.state !== 'verifying') return;
        if (check.ok) l.state = 'verified';
        else {
          l.state = 'failed';
          this.summary.plain.push({ digest: l.digest, reason: 'verify-failed', detail: check.reason });
          this.summary.estargzLayers = this.summary.estargzLayers.filter((d) => d !== l.digest);
        }
        this.#check();
      },
      (err: unknown) => {
        if (l.state !== 'verifying') return;
        if (this.#opts.fetcher.inflight(l.digest) !== blob) {
          // The download ended meanwhile: `done` (committed) or `begin`'s failure handler settles the layer.
          l.state = 'pending';
          return;
        }
        // Unreadable while still downloading: give up early readiness rather than wait on a
        // progress event that a held download may never send.
        l.state = 'failed';
        this.summary.plain.push({
          digest: l.digest,
          reason: 'verify-failed',
          detail: (err as Error).message,
        });
        this.summary.estargzLayers = this.summary.estargzLayers.filter((d) => d !== l.digest);
        this.#check();
      },
    );
  }

  /** Call when descriptor `i` is committed (verified by its digest). */
  done(i: number): void {
    this.#done[i] = true;
    this.#check();
  }

  /** Lifts every hold so no download waits forever (after a failure or abort). */
  close(): void {
    this.#settle();
    for (const l of this.#layers.values()) l.release();
  }

  #satisfied(i: number): boolean {
    const a = this.#alias[i] as number;
    if (this.#done[a] || this.#done[i]) return true;
    return this.#layers.get(a)?.state === 'verified';
  }

  #checkSettled(): void {
    for (const l of this.#layers.values())
      if ((l.state === 'pending' || l.state === 'verifying') && !this.#done[l.index]) return;
    this.#settle();
  }

  #check(): void {
    this.#checkSettled();
    if (this.#ready) return;
    const n = this.#done.length;
    let all = true;
    let allDone = true;
    for (let i = 0; i < n; i++) {
      if (!this.#satisfied(i)) all = false;
      if (!this.#done[i]) allDone = false;
    }
    // Fully warm first: "warm" says it all, there is nothing earlier to report.
    if (!all || allDone) return;
    this.#ready = true;
    this.summary.readyAfterMs = performance.now() - this.#started;
    this.#onReady();
  }
}

/**
 * A reader of blob ranges from `sources` in order (a failing peer is skipped). A server
 * that ignores Range is not read whole for a probe: it fails the read.
 */
function rangeReader(sources: BlobSource[], target: BlobTarget, signal?: AbortSignal): RangeReader {
  return async (start, end) => {
    let lastErr: unknown;
    for (const source of sources) {
      try {
        const res = await source.open(
          target,
          { start, end: end - 1 },
          signal ?? new AbortController().signal,
        );
        if (res.statusCode !== 206 && !(res.statusCode === 200 && start === 0 && end === target.size)) {
          res.body.destroy();
          throw new PrewarmError(
            ErrorCodes.REGISTRY_ERROR,
            `${source.name} ignored Range for ${target.digest}`,
          );
        }
        const chunks: Buffer[] = [];
        let n = 0;
        for await (const c of res.body as AsyncIterable<Buffer>) {
          chunks.push(c);
          n += c.length;
          if (n > end - start) break;
        }
        if (n !== end - start) {
          res.body.destroy();
          throw new PrewarmError(
            ErrorCodes.SIZE_MISMATCH,
            `${source.name}: ${n} bytes for a ${end - start}-byte range`,
          );
        }
        return Buffer.concat(chunks);
      } catch (err) {
        if (signal?.aborted) throw err;
        lastErr = err;
      }
    }
    throw lastErr ?? new PrewarmError(ErrorCodes.INVALID_CONFIG, 'no blob source configured');
  };
}
