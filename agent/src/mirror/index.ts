/**
 * The node-local OCI mirror (`Mirror`: containerd's, on loopback), the peer listener
 * (`PeerServer`: other agents', token-authenticated, blobs by digest only), their options,
 * and the pure request parsers (exported for tests and for the daemon's health checks).
 */
export { Mirror, type MirrorDeps, type MirrorStats, parseListen } from './mirror.js';
export type { MirrorOptions, TagPolicy } from './mirror-options.js';
export { MirrorHttpError, type OciErrorCode, ociErrorBody, relayableChallenge } from './oci-errors.js';
export {
  MIN_PEER_TOKEN_LENGTH,
  PeerServer,
  type PeerServerDeps,
  type PeerServerOptions,
  type PeerServerStats,
  readPeerTokens,
} from './peer-server.js';
export { parseRange, type RangeRequest } from './range.js';
export { RecordIndex } from './record-index.js';
export { type MirrorRoute, parseMirrorPath, parseNamespace, parsePeerPath } from './routes.js';
