/**
 * Secret comparison that takes the same time whatever the input. Both sides are first
 * reduced to an HMAC-SHA256 under a random per-process key, so `timingSafeEqual` always
 * compares two 32-byte digests: neither the secret's length nor a common prefix leaks
 * through timing, and a caller cannot precompute what the digest of a guess will be.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

const COMPARE_KEY = randomBytes(32);

function digestForCompare(value: string | Buffer): Buffer {
  return createHmac('sha256', COMPARE_KEY).update(value).digest();
}

/** True when `a` and `b` are the same bytes; constant time in both lengths and contents. */
export function constantTimeEqual(a: string | Buffer, b: string | Buffer): boolean {
  return timingSafeEqual(digestForCompare(a), digestForCompare(b));
}

/**
 * True when `presented` equals one of `secrets`. Every secret is compared (no early
 * exit), so the time does not tell which one matched or how many are configured
 * beyond their count.
 */
export function matchesAnySecret(presented: string | Buffer, secrets: readonly string[]): boolean {
  let ok = false;
  for (const s of secrets) ok = constantTimeEqual(presented, s) || ok;
  return ok;
}

/** Lower-case hex HMAC-SHA256 of `body` under `secret` (GitHub's X-Hub-Signature-256 scheme). */
export function hmacSha256Hex(secret: string, body: Buffer): string {
  return createHmac('sha256', secret).update(body).digest('hex');
}
