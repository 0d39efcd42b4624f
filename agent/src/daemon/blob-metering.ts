import { Agent, type Dispatcher } from 'undici';
import type { AgentMetrics } from './metrics.js';

const BLOB_PATH = /\/blobs\/sha256:[a-f0-9]{64}(?:$|\?)/;

/**
 * An undici interceptor that times every blob GET the registry client makes (one per
 * ranged chunk, or one whole blob) and counts its body bytes as fetched from the
 * registry. It observes only: the request and response pass through unchanged.
 * Redirected blob downloads (to object storage) are measured per hop.
 */
export function blobMetering(metrics: AgentMetrics): Dispatcher.DispatcherComposeInterceptor {
  return (dispatch) => (opts, handler) => {
    if ((opts.method ?? 'GET') !== 'GET' || !BLOB_PATH.test(opts.path)) return dispatch(opts, handler);
    const headers = opts.headers as Record<string, string | string[] | undefined> | undefined;
    const kind = headers && !Array.isArray(headers) && (headers.range ?? headers.Range) ? 'range' : 'whole';
    const stop = metrics.chunkDuration.startTimer({ kind });
    let status = 0;
    const h = handler as Dispatcher.DispatchHandler;
    return dispatch(opts, {
      onRequestStart: (c, ctx) => h.onRequestStart?.(c, ctx),
      onRequestUpgrade: (c, s, hd, sock) => h.onRequestUpgrade?.(c, s, hd, sock),
      onResponseStart: (c, s, hd, msg) => {
        status = s;
        return h.onResponseStart?.(c, s, hd, msg);
      },
      onResponseData: (c, chunk) => {
        if (status >= 200 && status < 300) metrics.bytesFetched.inc({ source: 'registry' }, chunk.length);
        return h.onResponseData?.(c, chunk);
      },
      onResponseEnd: (c, trailers) => {
        stop({ status: String(status) });
        return h.onResponseEnd?.(c, trailers);
      },
      onResponseError: (c, err) => {
        stop({ status: status === 0 ? 'error' : String(status) });
        return h.onResponseError?.(c, err);
      },
    });
  };
}

/** The registry client's default Agent, with blob metering composed in. */
export function meteredDispatcher(metrics: AgentMetrics): Dispatcher {
  return new Agent({
    keepAliveTimeout: 30_000,
    connections: null,
    pipelining: 1,
    connect: { timeout: 10_000 },
  }).compose(blobMetering(metrics));
}
