/**
 * `@firetower/client`: the client for Firetower gateways, for browsers and Node 18+.
 *
 * Entry point: {@link FiretowerClient}. It holds one WebSocket (subprotocol `firetower.json`)
 * to a gateway, reconnects with exponential backoff and full jitter, resubscribes and
 * recovers missed messages from topics' history, refreshes JWTs before they expire, and
 * reports failures as typed {@link FiretowerError}s. It has no runtime dependencies.
 */

export {
  FiretowerClient,
  Subscription,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_MAX_PENDING,
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_REQUEST_TIMEOUT_MS,
  type ClientEvents,
  type ConnectionState,
  type FiretowerClientOptions,
  type GapEvent,
  type HistoryResult,
  type PresenceEvent,
  type PresenceResult,
  type PublishAck,
  type RecoveredEvent,
  type SubscribeOptions,
  type TokenSource,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export { Backoff, DEFAULT_INITIAL_MS, DEFAULT_MAX_MS, DEFAULT_STABLE_MS, type ReconnectOptions } from "./backoff.js";
export {
  ConnectionClosedError,
  FiretowerError,
  ForbiddenError,
  RateLimitedError,
  TimeoutError,
  UnauthorizedError,
  UnavailableError,
  errorFor,
  type ClientErrorCode,
  type ErrorCode,
  type ErrorDetails,
  type ServerErrorCode,
} from "./errors.js";
export { SUBPROTOCOL, advance, parseServerFrame, type Message, type Position, type PresenceUser } from "./protocol.js";
export { DEFAULT_REFRESH_BEFORE_MS, refreshDelay, tokenExpiry } from "./token.js";
