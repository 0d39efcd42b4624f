/** Media types kube-prewarm understands (OCI image spec and Docker schema 2). */
export const MediaTypes = {
  OCI_MANIFEST: 'application/vnd.oci.image.manifest.v1+json',
  OCI_INDEX: 'application/vnd.oci.image.index.v1+json',
  OCI_CONFIG: 'application/vnd.oci.image.config.v1+json',
  OCI_LAYER: 'application/vnd.oci.image.layer.v1.tar',
  OCI_LAYER_GZIP: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OCI_LAYER_ZSTD: 'application/vnd.oci.image.layer.v1.tar+zstd',
  DOCKER_MANIFEST: 'application/vnd.docker.distribution.manifest.v2+json',
  DOCKER_MANIFEST_LIST: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DOCKER_CONFIG: 'application/vnd.docker.container.image.v1+json',
  DOCKER_LAYER_GZIP: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export const INDEX_MEDIA_TYPES: ReadonlySet<string> = new Set([
  MediaTypes.OCI_INDEX,
  MediaTypes.DOCKER_MANIFEST_LIST,
]);
export const IMAGE_MANIFEST_MEDIA_TYPES: ReadonlySet<string> = new Set([
  MediaTypes.OCI_MANIFEST,
  MediaTypes.DOCKER_MANIFEST,
]);

/** What we send in `Accept` for manifests: every type we can parse. */
export const MANIFEST_ACCEPT = [
  MediaTypes.OCI_INDEX,
  MediaTypes.OCI_MANIFEST,
  MediaTypes.DOCKER_MANIFEST_LIST,
  MediaTypes.DOCKER_MANIFEST,
].join(', ');
