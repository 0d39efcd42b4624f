import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ErrorCodes, PrewarmError } from '../../../oci/src/errors.js';

/** An image as the runtime reports it (CRI `Image`, the fields we declare). */
export interface CriImage {
  /** Image id: the config blob's digest (`sha256:…`). */
  id: string;
  repoTags: string[];
  repoDigests: string[];
  /** Bytes, as the runtime counts them. */
  size: number;
  pinned: boolean;
}

export interface CriVersion {
  /** CRI API version the runtime speaks (`v1`). */
  runtimeApiVersion: string;
  /** `containerd`, `cri-o`, … */
  runtimeName: string;
  /** The runtime's own version (`1.6.20~ds1`, `v2.1.4`). */
  runtimeVersion: string;
}

export interface CriAuth {
  username?: string;
  password?: string;
  /** base64 `user:password`. */
  auth?: string;
  serverAddress?: string;
  identityToken?: string;
  registryToken?: string;
}

export interface CriImageServiceOptions {
  /**
   * The runtime's socket: a path (`/run/containerd/containerd.sock`) or a gRPC target
   * (`unix:///run/containerd/containerd.sock`).
   */
  address: string;
  /** Deadline for ImageStatus, ListImages, RemoveImage and Version. Default 10 s. */
  callTimeoutMs?: number;
  /**
   * Deadline for PullImage. Default 30 min: a pull of a multi-GiB image through a slow
   * link is legitimately long; callers with a tighter budget pass `signal`.
   */
  pullTimeoutMs?: number;
  /** Path of `cri.proto`. Default: next to this module (or in the source tree when run from dist/). */
  protoPath?: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Overrides the default deadline for this call. */
  timeoutMs?: number;
}

type Unary<Req, Res> = (
  req: Req,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res?: Res) => void,
) => grpc.ClientUnaryCall;

interface WireImage {
  id?: string;
  repo_tags?: string[];
  repo_digests?: string[];
  size?: string | number;
  pinned?: boolean;
}

type ListReq = { filter?: { image?: { image: string } } };
type ListRes = { images?: WireImage[] };
type StatusReq = { image: { image: string }; verbose?: boolean };
type StatusRes = { image?: WireImage | null };
type PullReq = { image: { image: string }; auth?: Record<string, string> };
type PullRes = { image_ref?: string };
type RemoveReq = { image: { image: string } };
type VersionReq = { version: string };
type VersionRes = {
  version?: string;
  runtime_name?: string;
  runtime_version?: string;
  runtime_api_version?: string;
};

/** Where cri.proto lives: beside this file in the source tree; from dist/, back in the source tree. */
export function defaultProtoPath(): string {
  const here = fileURLToPath(new URL('./cri.proto', import.meta.url));
  if (existsSync(here)) return here;
  // dist/agent/src/runtime/ → <package root>/agent/src/runtime/cri.proto (tsc does not copy .proto files).
  return fileURLToPath(new URL('../../../../agent/src/runtime/cri.proto', import.meta.url));
}

function grpcTarget(address: string): string {
  if (address.startsWith('unix:') || address.includes('://')) return address;
  return `unix://${address}`;
}

/**
 * A client for the CRI `runtime.v1.ImageService` (and `RuntimeService.Version`) over the
 * runtime's unix socket, with grpc-js and our own minimal proto. One channel per instance;
 * call `close()` when done. Errors are PrewarmErrors: PW_ERR_NETWORK (socket unreachable,
 * deadline exceeded; retryable), PW_ERR_ABORTED, PW_ERR_MANIFEST_UNKNOWN (PullImage of a
 * reference the runtime cannot resolve), PW_ERR_REGISTRY (any other runtime error, with
 * the gRPC status in `detail.grpcCode`).
 */
export class CriImageService {
  readonly address: string;
  readonly #images: grpc.Client;
  readonly #runtime: grpc.Client;
  readonly #callTimeout: number;
  readonly #pullTimeout: number;

  constructor(opts: CriImageServiceOptions) {
    this.address = opts.address;
    this.#callTimeout = opts.callTimeoutMs ?? 10_000;
    this.#pullTimeout = opts.pullTimeoutMs ?? 30 * 60_000;
    const def = protoLoader.loadSync(opts.protoPath ?? defaultProtoPath(), {
      // snake_case field names as in the proto; 64-bit sizes as strings (no precision loss).
      keepCase: true,
      longs: String,
      defaults: true,
      oneofs: false,
    });
    const pkg = grpc.loadPackageDefinition(def) as unknown as {
      runtime: {
        v1: {
          ImageService: new (t: string, c: grpc.ChannelCredentials) => grpc.Client;
          RuntimeService: new (t: string, c: grpc.ChannelCredentials, o?: grpc.ChannelOptions) => grpc.Client;
        };
      };
    };
    const target = grpcTarget(opts.address);
    const creds = grpc.credentials.createInsecure();
    this.#images = new pkg.runtime.v1.ImageService(target, creds);
    // Share the channel: one connection to the runtime for both services.
    this.#runtime = new pkg.runtime.v1.RuntimeService(target, creds, {
      channelOverride: this.#images.getChannel(),
    } as grpc.ChannelOptions);
  }

  /** The runtime's name and versions (CRI `Version`). */
  async version(opts: CallOptions = {}): Promise<CriVersion> {
    const res = await this.#call<VersionReq, VersionRes>(
      this.#runtime,
      'Version',
      { version: 'v1' },
      opts,
      this.#callTimeout,
    );
    return {
      runtimeApiVersion: res.runtime_api_version ?? '',
      runtimeName: res.runtime_name ?? '',
      runtimeVersion: res.runtime_version ?? '',
    };
  }

  /**
   * Pulls (and, with containerd, unpacks) `image`; resolves to the image id (config digest).
   * Pull by digest (`registry/repo@sha256:…`) so the runtime fetches exactly what was warmed.
   */
  async pullImage(image: string, opts: CallOptions & { auth?: CriAuth } = {}): Promise<string> {
    const auth = opts.auth ? toWireAuth(opts.auth) : undefined;
    const res = await this.#call<PullReq, PullRes>(
      this.#images,
      'PullImage',
      { image: { image }, ...(auth ? { auth } : {}) },
      opts,
      this.#pullTimeout,
    );
    if (!res.image_ref)
      throw new PrewarmError(ErrorCodes.REGISTRY_ERROR, `PullImage ${image}: runtime returned no image ref`);
    return res.image_ref;
  }

  /** The image if the runtime has it, else undefined (CRI answers "absent" without an error). */
  async imageStatus(image: string, opts: CallOptions = {}): Promise<CriImage | undefined> {
    const res = await this.#call<StatusReq, StatusRes>(
      this.#images,
      'ImageStatus',
      { image: { image } },
      opts,
      this.#callTimeout,
    );
    return res.image ? fromWireImage(res.image) : undefined;
  }

  /** Every image the runtime has, or those matching `filter` (an image reference or id). */
  async listImages(filter?: string, opts: CallOptions = {}): Promise<CriImage[]> {
    const res = await this.#call<ListReq, ListRes>(
      this.#images,
      'ListImages',
      filter ? { filter: { image: { image: filter } } } : {},
      opts,
      this.#callTimeout,
    );
    return (res.images ?? []).map(fromWireImage);
  }

  /** Removes an image (by reference or id). Removing an absent image succeeds (CRI contract). */
  async removeImage(image: string, opts: CallOptions = {}): Promise<void> {
    await this.#call<RemoveReq, Record<string, never>>(
      this.#images,
      'RemoveImage',
      { image: { image } },
      opts,
      this.#callTimeout,
    );
  }

  close(): void {
    this.#images.close();
    this.#runtime.close();
  }

  #call<Req, Res>(
    client: grpc.Client,
    method: string,
    req: Req,
    opts: CallOptions,
    defaultTimeout: number,
  ): Promise<Res> {
    const signal = opts.signal;
    if (signal?.aborted)
      return Promise.reject(
        new PrewarmError(ErrorCodes.ABORTED, `${method}: aborted`, { cause: signal.reason }),
      );
    const deadline = new Date(Date.now() + (opts.timeoutMs ?? defaultTimeout));
    const fn = (client as unknown as Record<string, Unary<Req, Res>>)[method];
    if (!fn) return Promise.reject(new PrewarmError(ErrorCodes.INVALID_CONFIG, `CRI: no method ${method}`));
    return new Promise<Res>((resolve, reject) => {
      const call = fn.call(client, req, new grpc.Metadata(), { deadline }, (err, res) => {
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(toCriError(err, method, signal));
        else resolve(res as Res);
      });
      const onAbort = () => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

function fromWireImage(w: WireImage): CriImage {
  return {
    id: w.id ?? '',
    repoTags: w.repo_tags ?? [],
    repoDigests: w.repo_digests ?? [],
    size: Number(w.size ?? 0),
    pinned: w.pinned ?? false,
  };
}

function toWireAuth(a: CriAuth): Record<string, string> {
  const out: Record<string, string> = {};
  if (a.username) out.username = a.username;
  if (a.password) out.password = a.password;
  if (a.auth) out.auth = a.auth;
  if (a.serverAddress) out.server_address = a.serverAddress;
  if (a.identityToken) out.identity_token = a.identityToken;
  if (a.registryToken) out.registry_token = a.registryToken;
  return out;
}

function toCriError(err: grpc.ServiceError, method: string, signal: AbortSignal | undefined): PrewarmError {
  const detail = { grpcCode: err.code, grpcStatus: grpc.status[err.code] };
  const what = `CRI ${method}: ${err.details || err.message}`;
  if (err.code === grpc.status.CANCELLED && signal?.aborted)
    return new PrewarmError(ErrorCodes.ABORTED, what, { cause: err, detail });
  if (err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED)
    return new PrewarmError(ErrorCodes.NETWORK, what, { cause: err, detail, retryable: true });
  // containerd answers NotFound when a pull's reference cannot be resolved anywhere.
  if (err.code === grpc.status.NOT_FOUND)
    return new PrewarmError(ErrorCodes.MANIFEST_UNKNOWN, what, { cause: err, detail });
  return new PrewarmError(ErrorCodes.REGISTRY_ERROR, what, {
    cause: err,
    detail,
    retryable: err.code === grpc.status.UNKNOWN || err.code === grpc.status.RESOURCE_EXHAUSTED,
  });
}
