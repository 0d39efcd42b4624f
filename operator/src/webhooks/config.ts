/** Validation helpers for webhook options: fail fast with PW_ERR_INVALID_CONFIG. */
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';

/** Minimum length of a shared secret or token: shorter ones are guessable by an attacker with time. */
export const MIN_SECRET_LENGTH = 16;

export function invalidConfig(message: string): PrewarmError {
  return new PrewarmError(ErrorCodes.INVALID_CONFIG, `webhooks: ${message}`);
}

export function positiveInt(v: number, what: string): number {
  if (!Number.isInteger(v) || v <= 0) throw invalidConfig(`${what} must be a positive integer`);
  return v;
}

export function nonNegativeInt(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0) throw invalidConfig(`${what} must be a non-negative integer`);
  return v;
}

/** Validates a list of shared secrets: at least one, each at least MIN_SECRET_LENGTH characters. */
export function checkSecretList(secrets: readonly string[] | undefined, what: string): string[] {
  if (secrets === undefined || secrets.length === 0) throw invalidConfig(`${what} needs at least one secret`);
  for (const sec of secrets) {
    if (typeof sec !== 'string' || sec.length < MIN_SECRET_LENGTH) {
      throw invalidConfig(`every ${what} secret must be at least ${MIN_SECRET_LENGTH} characters`);
    }
  }
  return [...secrets];
}

export function checkSecrets<T extends { secrets: string[] }>(o: T, what: string): T {
  checkSecretList(o.secrets, what);
  return o;
}

/** Options usually come from a YAML file: a misspelt key must fail, not silently disable a check. */
export function checkKnownKeys(o: unknown, known: readonly string[], what: string): void {
  if (typeof o !== 'object' || o === null || Array.isArray(o))
    throw invalidConfig(`${what} must be an object`);
  for (const k of Object.keys(o)) {
    if (!known.includes(k))
      throw invalidConfig(`unknown ${what} key ${JSON.stringify(k)} (known: ${known.join(', ')})`);
  }
}
