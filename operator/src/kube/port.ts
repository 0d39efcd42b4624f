/**
 * The narrow slice of the Kubernetes API the operator uses. The reconciler and the
 * leader elector depend on this, not on @kubernetes/client-node, so the API surface
 * the operator needs (and its RBAC) is visible in one place.
 */
import type { V1Lease, V1Taint } from '@kubernetes/client-node';
import { kubeApiStatus, type SecretData } from '../../../oci/src/kube-secret.js';
import type { ImagePrewarm } from '../api/types.js';
import type { CredentialSecretsPort } from '../credentials/pull-credentials.js';
import type { NodeView } from './node-view.js';

/** A watched, cached collection (an informer). */
export interface WatchedCache<T> {
  list(): readonly T[];
  get(name: string, namespace?: string): T | undefined;
  /** Called for every add, update and delete (the object's last known state on delete). */
  onChange(handler: (obj: T) => void): void;
  /** True once the initial list has been delivered. */
  readonly synced: boolean;
  /** Resolves once synced. */
  waitForSync(signal?: AbortSignal): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** Error from the API server with its HTTP status (409 conflict, 404 not found, ...). */
export interface ApiError extends Error {
  statusCode?: number;
}

/** The API server's HTTP status of an error (kubeApiStatus, shared with the agent). */
export const apiStatus = kubeApiStatus;

export interface KubePort extends CredentialSecretsPort {
  readonly prewarms: WatchedCache<ImagePrewarm>;
  /** Nodes, projected to what selection needs (see `nodeView`). */
  readonly nodes: WatchedCache<NodeView>;
  /**
   * JSON merge patch of the status subresource (null deletes a field). Throws on 404.
   * Resolves to the object's resourceVersion after the write (undefined if the server did
   * not say).
   */
  patchPrewarmStatus(
    namespace: string,
    name: string,
    status: Record<string, unknown>,
  ): Promise<string | undefined>;
  /**
   * Sets `metadata.finalizers`, guarded by `resourceVersion` (409 when the object changed:
   * the caller re-reads and retries).
   */
  setPrewarmFinalizers(
    namespace: string,
    name: string,
    finalizers: string[],
    resourceVersion: string,
  ): Promise<void>;
  /** Replaces `spec.taints` of a node, guarded by `resourceVersion`. */
  setNodeTaints(name: string, taints: V1Taint[], resourceVersion: string): Promise<void>;
  /** A Secret's `type` and decoded `data`, or undefined when it does not exist. */
  readSecret(namespace: string, name: string): Promise<SecretData | undefined>;
  readLease(namespace: string, name: string): Promise<V1Lease | undefined>;
  /** Creates a Lease; 409 when it exists. */
  createLease(namespace: string, lease: V1Lease): Promise<V1Lease>;
  /** Replaces a Lease; 409 when `lease.metadata.resourceVersion` is stale. */
  replaceLease(namespace: string, name: string, lease: V1Lease): Promise<V1Lease>;
}
