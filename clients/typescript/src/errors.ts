/**
 * Typed errors. Every error the client raises or reports is a {@link FiretowerError} whose
 * `code` is the protocol's snake_case code (`forbidden`, `timeout`, ...) or one of the client's
 * own codes (`connection_closed`, `client_closed`, `too_many_pending`, ...). Subclasses group
 * the codes an application handles the same way, so both styles work:
 *
 * ```ts
 * if (e instanceof ForbiddenError) ...
 * if (e instanceof FiretowerError && e.code === "no_history") ...
 * ```
 */

/** Codes the gateway sends in `error` frames (docs/gateway.md, "Error codes"). */
export type ServerErrorCode =
  | "invalid_json"
  | "invalid_protobuf"
  | "unknown_op"
  | "missing_field"
  | "invalid_field"
  | "invalid_topic"
  | "too_many_topics"
  | "forbidden"
  | "unauthorized"
  | "banned"
  | "too_many_connections"
  | "rate_limited"
  | "unavailable"
  | "timeout"
  | "internal_error"
  | "not_configured"
  | "frame_too_large"
  | "hook_unavailable"
  | "no_history"
  | "presence_disabled";

/** Codes the client itself raises. */
export type ClientErrorCode =
  /** The connection closed while the request was in flight: its outcome is unknown. */
  | "connection_closed"
  /** `close()` was called, or the client gave up for good (4403, no way to get a token). */
  | "client_closed"
  /** `connect()` was not called yet. */
  | "not_connected"
  /** Too many requests waiting for an answer or for the connection to come back. */
  | "too_many_pending"
  /** This client already holds a subscription to the topic. */
  | "already_subscribed"
  /** The server answered something the client cannot read. */
  | "protocol_error"
  /** No WebSocket implementation: pass one in `options.WebSocket`. */
  | "no_websocket"
  /** A token callback failed or returned something that is not a string. */
  | "token_error";

/** Any error code; unknown server codes come through as they are. */
export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

/** Extra facts some errors carry. */
export interface ErrorDetails {
  /** The WebSocket close code, when the error came with a close (4401, 4403, 4429, ...). */
  closeCode?: number;
  /** The underlying error (a token callback's exception, ...). */
  cause?: unknown;
}

/** The base of every error this package raises. */
export class FiretowerError extends Error {
  /** The snake_case code: the protocol's, or the client's own. */
  readonly code: ErrorCode;
  /** The WebSocket close code, when the error came with a close. */
  readonly closeCode: number | undefined;
  override readonly cause: unknown;

  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.closeCode = details.closeCode;
    this.cause = details.cause;
  }
}

/** No token, an invalid or an expired one (`unauthorized`, close 4401). */
export class UnauthorizedError extends FiretowerError {}

/**
 * The user may not do this: a topic outside the token's patterns or a banned topic
 * (`forbidden`; the connection stays), or the user or address is banned or kicked (`banned`,
 * close 4403: the client does not reconnect).
 */
export class ForbiddenError extends FiretowerError {}

/**
 * No answer in time: the gateway's `timeout` (the cluster did not answer) or the client's own
 * request timeout. The outcome is unknown: a publish may have been delivered.
 */
export class TimeoutError extends FiretowerError {}

/** The cluster or a hook cannot serve the request now (`unavailable`, `hook_unavailable`, 4503). */
export class UnavailableError extends FiretowerError {}

/** Too many requests or connections (`rate_limited`, `too_many_connections`, 4429). */
export class RateLimitedError extends FiretowerError {}

/**
 * The connection closed before the answer came (`connection_closed`), or the client is
 * closed (`client_closed`). For a publish the outcome is unknown.
 */
export class ConnectionClosedError extends FiretowerError {}

/** The error class for a protocol code. */
export function errorFor(code: ErrorCode, message: string, details: ErrorDetails = {}): FiretowerError {
  switch (code) {
    case "unauthorized":
      return new UnauthorizedError(code, message, details);
    case "forbidden":
    case "banned":
      return new ForbiddenError(code, message, details);
    case "timeout":
      return new TimeoutError(code, message, details);
    case "unavailable":
    case "hook_unavailable":
      return new UnavailableError(code, message, details);
    case "rate_limited":
    case "too_many_connections":
      return new RateLimitedError(code, message, details);
    case "connection_closed":
    case "client_closed":
      return new ConnectionClosedError(code, message, details);
    default:
      return new FiretowerError(code, message, details);
  }
}
