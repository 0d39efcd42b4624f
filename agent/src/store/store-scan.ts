import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { type Digest, isDigest } from '../../../oci/src/digest.js';
import { manifestBlobs } from '../../../oci/src/manifest.js';
import type { ImageRecord } from './blob-store.js';
import type { FsBlobStore } from './fs-store.js';
import { readManifest } from './pins.js';

/**
 * How hard the startup scan checks committed blobs:
 * - `none`: names only;
 * - `size`: every blob named by a stored manifest has the size its descriptor says
 *   (cheap; catches truncation by a filesystem that lost data);
 * - `full`: every blob is re-hashed (reads the whole store; for paranoid nodes).
 */
export type ScanVerify = 'none' | 'size' | 'full';

export interface ScanReport {
  blobs: number;
  images: number;
  /** Leftover temp files of interrupted atomic writes. */
  removedTmp: number;
  /** Files in `blobs/` whose name is not a digest, or whose content failed verification. */
  removedBlobs: string[];
  /** Image records that pointed at content no longer in the store (the image is no longer warm). */
  removedImages: ImageRecord[];
  /** Partial downloads that cannot be resumed (no metadata, blob already committed, bad name). */
  removedIngests: number;
  /** Partial downloads kept for resuming. */
  keptIngests: number;
}

/**
 * Verifies the store against its files before anything else uses it, so a crash leaves
 * nothing corrupt and nothing orphaned forever: removes temp files and unresumable
 * partial downloads, drops blobs that fail `verify`, and drops image records whose
 * content is gone. Orphan blobs are left in place: garbage collection evicts them as
 * least recently used. Must run before the store serves or downloads (it deletes
 * `tmp/` wholesale).
 */
export async function scanStore(store: FsBlobStore, verify: ScanVerify = 'size'): Promise<ScanReport> {
  const report: ScanReport = {
    blobs: 0,
    images: 0,
    removedTmp: 0,
    removedBlobs: [],
    removedImages: [],
    removedIngests: 0,
    keptIngests: 0,
  };
  const removedBlobs: string[] = [];

  // 1. Temp files of interrupted atomic writes (records, small blobs).
  for (const name of await readdir(join(store.root, 'tmp')).catch(() => [] as string[])) {
    await rm(join(store.root, 'tmp', name), { recursive: true, force: true });
    report.removedTmp++;
  }

  // 2. Committed blobs: names, then content as `verify` asks.
  const blobDir = join(store.root, 'blobs', 'sha256');
  const present = new Map<Digest, number>();
  for (const name of await readdir(blobDir).catch(() => [] as string[])) {
    const digest = `sha256:${name}`;
    const path = join(blobDir, name);
    const st = await stat(path).catch(() => undefined);
    if (!isDigest(digest) || !st?.isFile()) {
      await rm(path, { recursive: true, force: true });
      removedBlobs.push(name);
      continue;
    }
    if (verify === 'full' && (await hashFile(path)) !== digest) {
      await rm(path, { force: true });
      removedBlobs.push(digest);
      continue;
    }
    present.set(digest, st.size);
  }
  const records = await store.listImages();
  if (verify !== 'none') {
    // Sizes from the descriptors in the records' manifests (layers themselves are never read).
    const expected = new Map<Digest, number>();
    for (const d of new Set(records.flatMap((r) => r.manifests))) {
      const m = present.has(d) ? await readManifest(store, d) : undefined;
      if (m?.kind === 'manifest') for (const b of manifestBlobs(m)) expected.set(b.digest, b.size);
      if (m?.kind === 'index') for (const c of m.manifests) expected.set(c.digest, c.size);
    }
    for (const [d, size] of expected) {
      const have = present.get(d);
      if (have !== undefined && have !== size) {
        await store.delete(d);
        present.delete(d);
        removedBlobs.push(d);
      }
    }
  }
  report.blobs = present.size;
  report.removedBlobs = removedBlobs;

  // 3. Image records: each must have all its content.
  for (const record of records) {
    const missing = [...record.manifests, ...record.blobs].some((d) => !present.has(d));
    if (missing) {
      await store.deleteImage(record);
      report.removedImages.push(record);
    } else report.images++;
  }
  // Unreadable record files (listImages skips them) are removed too.
  for (const name of await readdir(join(store.root, 'images')).catch(() => [] as string[])) {
    const path = join(store.root, 'images', name);
    const ok = name.endsWith('.json') && (await readJson(path)) !== undefined;
    if (!ok) await rm(path, { recursive: true, force: true });
  }

  // 4. Partial downloads: resumable ones stay.
  for (const name of await readdir(join(store.root, 'ingest')).catch(() => [] as string[])) {
    const digest = `sha256:${name}`;
    const dir = join(store.root, 'ingest', name);
    const meta = (await readJson(join(dir, 'meta.json'))) as { size?: unknown } | undefined;
    const data = await stat(join(dir, 'data')).catch(() => undefined);
    const resumable =
      isDigest(digest) &&
      !present.has(digest) &&
      typeof meta?.size === 'number' &&
      data?.isFile() === true &&
      data.size <= meta.size;
    if (resumable) report.keptIngests++;
    else {
      await rm(dir, { recursive: true, force: true });
      report.removedIngests++;
    }
  }
  return report;
}

async function hashFile(path: string): Promise<Digest> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return `sha256:${h.digest('hex')}`;
}

async function readJson(path: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as unknown;
  } catch {
    return undefined;
  }
}
