/**
 * Runtime integration: the CRI image client, `unpack` mode's import, hosts.toml generation
 * and installation, and the containerd start-up check (transfer-service caveat).
 */

export {
  type CheckOptions,
  type ContainerdCheck,
  checkContainerd,
  parseContainerdVersion,
  readContainerdConfig,
  tomlLookup,
} from './containerd-check.js';
export {
  type CallOptions,
  type CriAuth,
  type CriImage,
  CriImageService,
  type CriImageServiceOptions,
  type CriVersion,
} from './cri-image-service.js';
export {
  BACKUP_NAME,
  type HostsInstallerOptions,
  HostsTomlInstaller,
  type InstallOutcome,
  isManaged,
  type UninstallOutcome,
} from './hosts-installer.js';
export { DEFAULT_NAMESPACE, type HostsEntry, MANAGED_MARKER, renderHostsToml } from './hosts-toml.js';
export { type UnpackOptions, type UnpackResult, type UnpackTarget, unpackImage } from './unpack.js';
