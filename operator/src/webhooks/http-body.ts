/**
 * Reading a webhook body safely: announced or actual size over the limit is refused
 * (without buffering it), a body that trickles in slower than the timeout is refused,
 * and only identity-encoded bodies of an expected media type are read at all.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { WebhookError, WebhookErrorCodes } from './errors.js';

/** First value of a header (Node joins most duplicates already; arrays only for set-cookie-like ones). */
export function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/** The media type of a Content-Type header value, lower-case, without parameters. */
export function mediaTypeOf(contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined;
  const mt = contentType.split(';', 1)[0]!.trim().toLowerCase();
  return mt.length > 0 ? mt : undefined;
}

/**
 * Throws 415 unless the request's media type is one of `allowed` (lower-case) and the body
 * is not content-encoded (no sender we support compresses; decompressing attacker input
 * would make the size limit meaningless).
 */
export function checkContentType(headers: IncomingHttpHeaders, allowed: readonly string[]): void {
  const encoding = headerValue(headers, 'content-encoding');
  if (encoding !== undefined && encoding.trim().toLowerCase() !== 'identity') {
    throw new WebhookError(
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
      `Content-Encoding ${JSON.stringify(encoding.slice(0, 40))} is not supported`,
    );
  }
  const mt = mediaTypeOf(headerValue(headers, 'content-type'));
  if (mt === undefined || !allowed.includes(mt)) {
    throw new WebhookError(
      WebhookErrorCodes.UNSUPPORTED_MEDIA_TYPE,
      `Content-Type ${mt === undefined ? '(none)' : JSON.stringify(mt.slice(0, 100))} is not accepted here; expected one of ${allowed.join(', ')}`,
    );
  }
}

/**
 * Reads the whole body. Rejects with 413 when Content-Length announces more than `limit`
 * (before reading anything) or the body grows past it, and with 408 when it has not fully
 * arrived after `timeoutMs`. On rejection the request stream is left paused; the caller
 * answers and closes the connection.
 */
export function readBody(req: IncomingMessage, limit: number, timeoutMs: number): Promise<Buffer> {
  const announced = headerValue(req.headers, 'content-length');
  if (announced !== undefined && Number(announced) > limit) {
    return Promise.reject(tooLarge(limit));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (err: Error | undefined, body?: Buffer): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('aborted', onAborted);
      if (err) {
        req.pause();
        reject(err);
      } else resolve(body!);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.byteLength;
      if (size > limit) finish(tooLarge(limit));
      else chunks.push(chunk);
    };
    const onEnd = (): void => finish(undefined, Buffer.concat(chunks, size));
    const onError = (err: Error): void =>
      finish(new WebhookError(WebhookErrorCodes.MALFORMED, 'request body could not be read', { cause: err }));
    const onAborted = (): void =>
      finish(new WebhookError(WebhookErrorCodes.MALFORMED, 'request body was cut off by the client'));
    const timer = setTimeout(
      () =>
        finish(
          new WebhookError(
            WebhookErrorCodes.BODY_TIMEOUT,
            `request body not received within ${timeoutMs} ms`,
          ),
        ),
      timeoutMs,
    );
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('aborted', onAborted);
  });
}

function tooLarge(limit: number): WebhookError {
  return new WebhookError(WebhookErrorCodes.PAYLOAD_TOO_LARGE, `request body exceeds ${limit} bytes`);
}
