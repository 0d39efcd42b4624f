/**
 * Which ImagePrewarm image entries a push event concerns. Pure. Matching is on the
 * normalised repository (`registry/path`, Docker Hub short names expanded) and on the tag
 * (exact, or a tagGlob). Pushes without a tag match nothing: entries pinned by digest never
 * move, and a tag entry cannot know a bare digest is its new target without resolving.
 */
import { isDigest } from '../../../oci/src/digest.js';
import { parseReference } from '../../../oci/src/reference.js';
import type { ImagePrewarm, ImageSpec } from '../api/types.js';
import type { PushEventLike } from '../queue/types.js';

/** Shell-style glob over a tag: `*` any run, `?` one character; everything else literal. */
export function globToRegExp(glob: string): RegExp {
  let re = '^';
  for (const ch of glob) {
    if (ch === '*') re += '.*';
    else if (ch === '?') re += '.';
    else re += ch.replace(/[.+^${}()|[\]\\-]/g, '\\$&');
  }
  return new RegExp(`${re}$`);
}

export function tagMatches(img: ImageSpec, tag: string): boolean {
  if (img.tag !== undefined) return img.tag === tag;
  if (img.tagGlob !== undefined) return globToRegExp(img.tagGlob).test(tag);
  return false;
}

/** `registry/repository` normalised like image references (`docker.io/library/x`). */
export function normaliseRepository(repo: string): string | undefined {
  try {
    const ref = parseReference(repo.includes('@') || /:[^/]*$/.test(repo) ? repo : `${repo}:latest`);
    return `${ref.registry}/${ref.repository}`;
  } catch {
    return undefined;
  }
}

export interface PushMatch {
  prewarm: ImagePrewarm;
  /** Indexes into `spec.images`. */
  images: number[];
}

/** The ImagePrewarms (with `triggers.onPush` not false) and entries a push concerns. */
export function matchPush(event: PushEventLike, prewarms: readonly ImagePrewarm[]): PushMatch[] {
  if (!event.tag) return [];
  const target = normaliseRepository(`${event.registry}/${event.repository}`);
  if (!target) return [];
  const out: PushMatch[] = [];
  for (const p of prewarms) {
    if (p.spec?.triggers?.onPush === false || p.metadata.deletionTimestamp) continue;
    const images: number[] = [];
    (p.spec?.images ?? []).forEach((img, i) => {
      if (img.digest !== undefined) return;
      if (normaliseRepository(img.repository) !== target) return;
      if (tagMatches(img, event.tag!)) images.push(i);
    });
    if (images.length > 0) out.push({ prewarm: p, images });
  }
  return out;
}

export { isDigest };
