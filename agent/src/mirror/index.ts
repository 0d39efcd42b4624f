/**
 * The node-local OCI mirror: `Mirror` (start/close, stats), its options, and the pure
 * request parsers (exported for tests and for the daemon's health checks).
 */
export { Mirror, type MirrorDeps, type MirrorStats, PEER_HEADER, parseListen } from './mirror.js';
export type { MirrorOptions, TagPolicy } from './mirror-options.js';
export { MirrorHttpError, type OciErrorCode, ociErrorBody } from './oci-errors.js';
export { parseRange, type RangeRequest } from './range.js';
export { type MirrorRoute, parseMirrorPath, parseNamespace } from './routes.js';
