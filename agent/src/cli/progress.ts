import cliProgress from 'cli-progress';
import type { WarmProgress } from '../fetch/image-warmer.js';
import { formatBytes, formatDuration } from '../util/format.js';

/**
 * Renders warm progress: on a TTY a multi-bar (total + one bar per blob in flight, with
 * rate and ETA); elsewhere a line every few seconds, so CI logs stay readable.
 */
export class ProgressView {
  readonly #tty: boolean;
  readonly #out: NodeJS.WriteStream;
  readonly #started = performance.now();
  #multi: cliProgress.MultiBar | undefined;
  #total: cliProgress.SingleBar | undefined;
  readonly #bars = new Map<string, cliProgress.SingleBar>();
  #lastLine = 0;
  #last: WarmProgress | undefined;
  /** Bytes each blob already had when first reported (resumed or present): not counted in the rate. */
  readonly #baseline = new Map<string, number>();

  constructor(out: NodeJS.WriteStream = process.stderr) {
    this.#out = out;
    this.#tty = out.isTTY === true;
  }

  update(p: WarmProgress): void {
    this.#last = p;
    const elapsed = performance.now() - this.#started;
    let fetched = 0;
    for (const b of p.blobs) {
      if (!this.#baseline.has(b.digest) && (b.bytesDone > 0 || b.done))
        this.#baseline.set(b.digest, b.bytesDone);
      fetched += b.bytesDone - (this.#baseline.get(b.digest) ?? 0);
    }
    const rate = fetched / Math.max(0.001, elapsed / 1000);
    const eta = rate > 0 ? ((p.bytesTotal - p.bytesDone) / rate) * 1000 : Number.POSITIVE_INFINITY;
    if (!this.#tty) {
      if (performance.now() - this.#lastLine > 2000 || p.phase === 'warm') {
        this.#lastLine = performance.now();
        this.#out.write(
          `${p.phase} ${formatBytes(p.bytesDone)}/${formatBytes(p.bytesTotal)} layers ${p.layersDone}/${p.layersTotal} ${formatBytes(rate)}/s eta ${formatDuration(eta)}\n`,
        );
      }
      return;
    }
    if (p.phase === 'resolving') return;
    if (!this.#multi) {
      this.#multi = new cliProgress.MultiBar(
        {
          format: ' {name} |{bar}| {pct}% {done}/{size} {rate} eta {eta}',
          hideCursor: true,
          clearOnComplete: false,
          stream: this.#out,
          barsize: 30,
        },
        cliProgress.Presets.shades_classic,
      );
      this.#total = this.#multi.create(
        p.bytesTotal,
        0,
        this.#payload('total', p.bytesDone, p.bytesTotal, rate, eta),
      );
    }
    this.#total?.setTotal(p.bytesTotal);
    this.#total?.update(p.bytesDone, this.#payload('total', p.bytesDone, p.bytesTotal, rate, eta));
    for (const b of p.blobs) {
      if (b.size < 1024 * 1024 && !this.#bars.has(b.digest)) continue;
      let bar = this.#bars.get(b.digest);
      if (!bar && b.bytesDone > 0 && !b.done) {
        bar = this.#multi.create(b.size, 0);
        this.#bars.set(b.digest, bar);
      }
      bar?.update(b.bytesDone, this.#payload(b.digest.slice(7, 19), b.bytesDone, b.size, rate, Number.NaN));
    }
  }

  #payload(name: string, done: number, size: number, rate: number, eta: number) {
    return {
      name: name.padEnd(12),
      pct: size > 0 ? Math.floor((done / size) * 100) : 100,
      done: formatBytes(done),
      size: formatBytes(size),
      rate: `${formatBytes(rate)}/s`,
      eta: formatDuration(eta),
    };
  }

  stop(): void {
    this.#multi?.stop();
    if (!this.#tty && this.#last && this.#last.phase !== 'warm') this.#lastLine = 0;
  }
}
