import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { Logger } from 'pino';

export interface ContainerdImageEventsOptions {
  /** containerd's socket path (or a `unix://` target). */
  address: string;
  /** Namespace whose image deletions matter. Default `k8s.io` (CRI's). */
  namespace?: string;
  /** Called for every image deleted in `namespace`, with the image name containerd reports. */
  onDelete: (image: string) => void;
  logger: Logger;
  /** Wait before re-subscribing after the stream ends or fails. Default 5 s. */
  reconnectMs?: number;
}

interface WireEnvelope {
  namespace?: string;
  topic?: string;
  event?: { type_url?: string; value?: Buffer };
}

/** Where the .proto lives: beside this file in the source tree; from dist/, back in the source tree. */
function protoPath(): string {
  const here = fileURLToPath(new URL('./containerd-events.proto', import.meta.url));
  if (existsSync(here)) return here;
  // tsc does not copy .proto files: dist/agent/src/runtime/ → <package root>/agent/src/runtime/.
  return fileURLToPath(new URL('../../../../agent/src/runtime/containerd-events.proto', import.meta.url));
}

/**
 * Follows containerd's `/images/delete` events (kubelet's image GC, `crictl rmi`,
 * pruning) so the re-check runs at once when an image disappears. A stream that ends or
 * fails (containerd restarting) is re-subscribed after `reconnectMs`; events missed
 * meanwhile are caught by the periodic re-check, which stays the source of truth.
 */
export class ContainerdImageEvents {
  readonly #opts: Required<ContainerdImageEventsOptions>;
  readonly #client: grpc.Client;
  #call: grpc.ClientReadableStream<WireEnvelope> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(opts: ContainerdImageEventsOptions) {
    this.#opts = { namespace: 'k8s.io', reconnectMs: 5_000, ...opts };
    const def = protoLoader.loadSync(protoPath(), { keepCase: true, longs: String, defaults: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as {
      containerd: {
        services: {
          events: { v1: { Events: new (t: string, c: grpc.ChannelCredentials) => grpc.Client } };
        };
      };
    };
    const target =
      opts.address.includes('://') || opts.address.startsWith('unix:')
        ? opts.address
        : `unix://${opts.address}`;
    this.#client = new pkg.containerd.services.events.v1.Events(target, grpc.credentials.createInsecure());
  }

  /** Subscribes (and keeps re-subscribing) until `close`. */
  start(): void {
    if (this.#closed || this.#call) return;
    const filter = `topic=="/images/delete",namespace==${JSON.stringify(this.#opts.namespace)}`;
    const subscribe = (
      this.#client as unknown as Record<string, (req: unknown) => grpc.ClientReadableStream<WireEnvelope>>
    ).Subscribe as (req: unknown) => grpc.ClientReadableStream<WireEnvelope>;
    const call = subscribe.call(this.#client, { filters: [filter] });
    this.#call = call;
    call.on('data', (e: WireEnvelope) => {
      if (e.namespace !== this.#opts.namespace || e.topic !== '/images/delete') return;
      this.#opts.onDelete(imageDeleteName(e.event?.value) ?? '');
    });
    const retry = (why: string, err?: unknown) => {
      if (this.#call !== call) return;
      this.#call = undefined;
      if (this.#closed) return;
      this.#opts.logger.debug({ err, why }, 'containerd event stream ended; re-subscribing');
      this.#timer = setTimeout(() => this.start(), this.#opts.reconnectMs);
    };
    call.on('error', (err) => retry('error', err));
    call.on('end', () => retry('end'));
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#call?.cancel();
    this.#call = undefined;
    this.#client.close();
  }
}

/**
 * The `name` of a `containerd.events.ImageDelete` (field 1, a string) from the event's
 * Any value, decoded by hand: one length-delimited field is all we need.
 */
export function imageDeleteName(value: Buffer | undefined): string | undefined {
  if (!value || value.length < 2 || value[0] !== 0x0a) return undefined;
  let len = 0;
  let shift = 0;
  let i = 1;
  for (; i < value.length && i < 6; i++) {
    const b = value[i] as number;
    len |= (b & 0x7f) << shift;
    shift += 7;
    if ((b & 0x80) === 0) {
      i++;
      break;
    }
  }
  if (i + len > value.length) return undefined;
  return value.subarray(i, i + len).toString('utf8');
}
