/**
 * Manifest media types a push event may name. Anything else in a distribution-style
 * event (layers, configs, `application/octet-stream` blob events) is not an image push.
 */
import { MediaTypes } from '../../../../oci/src/media-types.js';

export const PUSHABLE_MANIFEST_TYPES: ReadonlySet<string> = new Set([
  MediaTypes.OCI_MANIFEST,
  MediaTypes.OCI_INDEX,
  MediaTypes.DOCKER_MANIFEST,
  MediaTypes.DOCKER_MANIFEST_LIST,
  // Schema 1 is long deprecated, but old registries still emit it; the operator's resolve decides.
  'application/vnd.docker.distribution.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
]);
