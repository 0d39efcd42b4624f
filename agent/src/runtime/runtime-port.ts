/**
 * The part of the container runtime the daemon uses, as a narrow port: in `unpack` mode
 * a job ends with a CRI PullImage by digest (containerd pulls through the node-local
 * mirror, so the bytes come from the store) and one by tag, so that kubelet finds
 * `repository:tag` present too (runtime/unpack.ts), and the re-check asks ImageStatus whether
 * a warm image is still there. runtime/cri-image-service.ts implements it over CRI.
 */
export interface RuntimeImageService {
  /** Pulls (and unpacks) `image` (`registry/repo@sha256:…`); resolves to the image id. */
  pullImage(image: string, opts?: { signal?: AbortSignal; timeoutMs?: number }): Promise<string>;
  /** The image when the runtime has it, else undefined. */
  imageStatus(
    image: string,
    opts?: { signal?: AbortSignal; timeoutMs?: number },
  ): Promise<{ id: string } | undefined>;
  removeImage(image: string, opts?: { signal?: AbortSignal }): Promise<void>;
  close(): void;
}
