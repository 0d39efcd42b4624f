/**
 * Following a floating tag: when it moves to a new digest, the old one joins the
 * retained list (newest first) and whatever falls off the end of `retain` is dropped
 * (unpinned on every node). Pure.
 */
import type { Digest } from '../../../oci/src/digest.js';
import type { DigestRecord, ImageStatus } from '../api/types.js';

export interface Advanced {
  previous: DigestRecord[];
  dropped: Digest[];
}

/**
 * The retained and dropped digests after `record` (the image's last status) moves to
 * `current` with `retain` previous digests kept. A digest never appears both as current
 * and retained; going back to an earlier digest takes it out of the retained list.
 */
export function advance(
  record: ImageStatus | undefined,
  current: Digest | undefined,
  retain: number,
): Advanced {
  const candidates: DigestRecord[] = [];
  if (record?.digest && record.digest !== current) {
    candidates.push({
      digest: record.digest,
      ...(record.tag !== undefined ? { tag: record.tag } : {}),
      ...(record.resolvedAt !== undefined ? { resolvedAt: record.resolvedAt } : {}),
    });
  }
  candidates.push(...(record?.previousDigests ?? []));
  const seen = new Set<string>();
  const unique = candidates.filter((d) => {
    if (d.digest === current || seen.has(d.digest)) return false;
    seen.add(d.digest);
    return true;
  });
  const keep = Math.max(0, retain);
  return {
    previous: unique.slice(0, keep),
    dropped: unique.slice(keep).map((d) => d.digest as Digest),
  };
}

/** Every digest a status record pins (current and retained). */
export function pinnedDigests(record: ImageStatus): Digest[] {
  const out: Digest[] = [];
  if (record.digest) out.push(record.digest as Digest);
  for (const p of record.previousDigests ?? []) out.push(p.digest as Digest);
  return out;
}
