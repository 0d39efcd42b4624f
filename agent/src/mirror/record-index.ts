import type { Digest } from '../../../oci/src/digest.js';
import type { BlobStore, ImageRecord } from '../store/blob-store.js';

/** What the store's image records say about one repository (`registry/name`). */
interface RepositoryEntry {
  /** Every manifest and blob digest some record of this repository lists. */
  digests: Set<Digest>;
  /** Records that carry a tag, for the tag fallback. */
  tagged: ImageRecord[];
}

/**
 * How long after a change of the records directory an index built from it is still
 * rebuilt on the next lookup: directory timestamps come from a coarse clock, so two writes
 * within one tick leave the same mtime and the second would go unseen.
 */
const RACY_WINDOW_MS = 1_000;

/**
 * Which digests the store's image records tie to which repository: the mirror serves a
 * manifest or blob under `/v2/<name>/…?ns=<registry>` without asking the upstream only when
 * a record of `<registry>/<name>` lists it (an image warmed here on purpose). Built from
 * `store.listImages()` and rebuilt when the store's `imagesStamp()` changes (records written
 * by another process, e.g. `kube-prewarm warm` beside `kube-prewarm serve`, are seen too);
 * without a stamp every lookup re-reads the records.
 */
export class RecordIndex {
  readonly #store: BlobStore;
  #built: { stamp: string | undefined; racy: boolean; repos: Map<string, RepositoryEntry> } | undefined;
  #building: Promise<Map<string, RepositoryEntry>> | undefined;

  constructor(store: BlobStore) {
    this.#store = store;
  }

  /** True when a record of `repository` (`registry/name`) lists `digest` (index, manifest, config or layer). */
  async ties(repository: string, digest: Digest): Promise<boolean> {
    return (await this.#repos()).get(repository)?.digests.has(digest) ?? false;
  }

  /**
   * The digest last recorded for `repository:tag`: the newest record of the first of
   * `platforms` that has one, else the newest record of any platform.
   */
  async tagDigest(
    repository: string,
    tag: string,
    platforms: readonly string[],
  ): Promise<Digest | undefined> {
    const tagged = ((await this.#repos()).get(repository)?.tagged ?? []).filter((r) => r.tag === tag);
    const newest = (rs: ImageRecord[]) =>
      rs.reduce<ImageRecord | undefined>((b, r) => (!b || r.warmedAt > b.warmedAt ? r : b), undefined);
    for (const p of platforms) {
      const r = newest(tagged.filter((x) => x.platform === p));
      if (r) return r.digest;
    }
    return newest(tagged)?.digest;
  }

  async #repos(): Promise<Map<string, RepositoryEntry>> {
    const stamp = await this.#store.imagesStamp?.().catch(() => undefined);
    const b = this.#built;
    if (b && stamp && b.stamp === stamp.stamp && !b.racy) return b.repos;
    // One rebuild at a time; concurrent lookups share it.
    this.#building ??= (async () => {
      try {
        const racy = !stamp || Date.now() - stamp.changedAtMs < RACY_WINDOW_MS;
        const repos = new Map<string, RepositoryEntry>();
        for (const r of await this.#store.listImages()) {
          let e = repos.get(r.repository);
          if (!e) {
            e = { digests: new Set(), tagged: [] };
            repos.set(r.repository, e);
          }
          e.digests.add(r.digest);
          e.digests.add(r.manifestDigest);
          for (const d of r.manifests) e.digests.add(d);
          for (const d of r.blobs) e.digests.add(d);
          if (r.tag !== undefined) e.tagged.push(r);
        }
        this.#built = { stamp: stamp?.stamp, racy, repos };
        return repos;
      } finally {
        this.#building = undefined;
      }
    })();
    return this.#building;
  }
}
