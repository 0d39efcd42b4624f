import { statfs } from 'node:fs/promises';

/** Size and free space of the filesystem that holds a path. */
export interface FsSpace {
  /** Filesystem size in bytes. */
  totalBytes: number;
  /** Bytes an unprivileged writer may still use (`f_bavail`). */
  availableBytes: number;
}

/** Reads the filesystem's size and free space with statfs(2). */
export async function fsSpace(path: string): Promise<FsSpace> {
  const s = await statfs(path);
  return { totalBytes: s.blocks * s.bsize, availableBytes: s.bavail * s.bsize };
}

/** A store's disk budget: a byte cap, a share of the filesystem, or both (the smaller wins). */
export interface DiskBudget {
  /** Bytes the store may use; 0 = no byte cap. */
  maxBytes: number;
  /** Percent (0-100] of the filesystem's size the store may use; 0 = no percent cap. */
  maxPercent: number;
}

/**
 * The budget in bytes for a filesystem of `totalBytes`: the smaller of the two caps
 * that are set, or Infinity when neither is.
 */
export function budgetBytes(budget: DiskBudget, totalBytes: number): number {
  let limit = Number.POSITIVE_INFINITY;
  if (budget.maxBytes > 0) limit = Math.min(limit, budget.maxBytes);
  if (budget.maxPercent > 0) limit = Math.min(limit, Math.floor((totalBytes * budget.maxPercent) / 100));
  return limit;
}
