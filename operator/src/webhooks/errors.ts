/**
 * Why a webhook delivery was refused. Every rejection answers a JSON body
 * `{ "error": { "code": "PW_ERR_WEBHOOK_…", "message": "…", "source": "…" } }` with the
 * status below; callers (and tests) branch on `code`, never on the message. Messages
 * never contain secrets, signatures or tokens.
 *
 * These codes live here rather than in oci/src/errors.ts because only the webhook
 * endpoints produce them and `PrewarmError`'s code union is closed.
 */
export const WebhookErrorCodes = {
  /** 404: no configured source at that path. */
  NOT_FOUND: 'PW_ERR_WEBHOOK_NOT_FOUND',
  /** 405: anything but POST. */
  METHOD_NOT_ALLOWED: 'PW_ERR_WEBHOOK_METHOD_NOT_ALLOWED',
  /** 415: missing or unexpected Content-Type, or a Content-Encoding. */
  UNSUPPORTED_MEDIA_TYPE: 'PW_ERR_WEBHOOK_UNSUPPORTED_MEDIA_TYPE',
  /** 413: body over the configured limit. */
  PAYLOAD_TOO_LARGE: 'PW_ERR_WEBHOOK_PAYLOAD_TOO_LARGE',
  /** 408: the body did not arrive in time. */
  BODY_TIMEOUT: 'PW_ERR_WEBHOOK_BODY_TIMEOUT',
  /** 400: the body is not what the source sends (bad JSON, missing fields, bad names). */
  MALFORMED: 'PW_ERR_WEBHOOK_MALFORMED',
  /** 401: no credential, a wrong one, or a signature that does not verify. */
  UNAUTHENTICATED: 'PW_ERR_WEBHOOK_UNAUTHENTICATED',
  /** 403: authentic, but from a sender this endpoint is not configured to accept (topic, subscription, account). */
  FORBIDDEN: 'PW_ERR_WEBHOOK_FORBIDDEN',
  /** 400: the event's own timestamp is too old or too far in the future (replay protection). */
  STALE: 'PW_ERR_WEBHOOK_STALE',
  /** 503: too many events waiting for dispatch, or shutting down; the sender should retry. */
  UNAVAILABLE: 'PW_ERR_WEBHOOK_UNAVAILABLE',
} as const;

export type WebhookErrorCode = (typeof WebhookErrorCodes)[keyof typeof WebhookErrorCodes];

const STATUS: Record<WebhookErrorCode, number> = {
  PW_ERR_WEBHOOK_NOT_FOUND: 404,
  PW_ERR_WEBHOOK_METHOD_NOT_ALLOWED: 405,
  PW_ERR_WEBHOOK_UNSUPPORTED_MEDIA_TYPE: 415,
  PW_ERR_WEBHOOK_PAYLOAD_TOO_LARGE: 413,
  PW_ERR_WEBHOOK_BODY_TIMEOUT: 408,
  PW_ERR_WEBHOOK_MALFORMED: 400,
  PW_ERR_WEBHOOK_UNAUTHENTICATED: 401,
  PW_ERR_WEBHOOK_FORBIDDEN: 403,
  PW_ERR_WEBHOOK_STALE: 400,
  PW_ERR_WEBHOOK_UNAVAILABLE: 503,
};

export class WebhookError extends Error {
  readonly code: WebhookErrorCode;
  /** The HTTP status the delivery is answered with. */
  readonly status: number;
  /** Extra response headers (Allow, Retry-After). */
  readonly headers: Readonly<Record<string, string>>;

  constructor(
    code: WebhookErrorCode,
    message: string,
    options: { cause?: unknown; headers?: Record<string, string> } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'WebhookError';
    this.code = code;
    this.status = STATUS[code];
    this.headers = options.headers ?? {};
  }
}

export function isWebhookError(err: unknown, code?: WebhookErrorCode): err is WebhookError {
  return err instanceof WebhookError && (code === undefined || err.code === code);
}

/** Shorthand for the most common rejection. */
export function malformed(message: string, cause?: unknown): WebhookError {
  return new WebhookError(WebhookErrorCodes.MALFORMED, message, cause === undefined ? {} : { cause });
}

export function unauthenticated(message: string): WebhookError {
  return new WebhookError(WebhookErrorCodes.UNAUTHENTICATED, message);
}

export function forbidden(message: string): WebhookError {
  return new WebhookError(WebhookErrorCodes.FORBIDDEN, message);
}
