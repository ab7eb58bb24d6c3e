/**
 * `@firetower/client`: the client for Firetower gateways, for browsers and Node 18+.
 *
 * Entry point: {@link FiretowerClient}. It holds one WebSocket (subprotocol `firetower.json`)
 * to a gateway, reconnects with exponential backoff and full jitter, resubscribes and
 * recovers missed messages from topics' history, refreshes JWTs before they expire, and
 * reports failures as typed {@link FiretowerError}s. It has no runtime dependencies.
 */
export { FiretowerClient, Subscription, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_MAX_PENDING, DEFAULT_PING_INTERVAL_MS, DEFAULT_REQUEST_TIMEOUT_MS, } from "./client.js";
export { Backoff, DEFAULT_INITIAL_MS, DEFAULT_MAX_MS, DEFAULT_STABLE_MS } from "./backoff.js";
export { ConnectionClosedError, FiretowerError, ForbiddenError, RateLimitedError, TimeoutError, UnauthorizedError, UnavailableError, errorFor, } from "./errors.js";
export { SUBPROTOCOL, advance, parseServerFrame } from "./protocol.js";
export { DEFAULT_REFRESH_BEFORE_MS, refreshDelay, tokenExpiry } from "./token.js";
