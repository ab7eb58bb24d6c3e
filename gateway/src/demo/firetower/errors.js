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
/** The base of every error this package raises. */
export class FiretowerError extends Error {
    /** The snake_case code: the protocol's, or the client's own. */
    code;
    /** The WebSocket close code, when the error came with a close. */
    closeCode;
    cause;
    constructor(code, message, details = {}) {
        super(message);
        this.name = new.target.name;
        this.code = code;
        this.closeCode = details.closeCode;
        this.cause = details.cause;
    }
}
/** No token, an invalid or an expired one (`unauthorized`, close 4401). */
export class UnauthorizedError extends FiretowerError {
}
/**
 * The user may not do this: a topic outside the token's patterns or a banned topic
 * (`forbidden`; the connection stays), or the user or address is banned or kicked (`banned`,
 * close 4403: the client does not reconnect).
 */
export class ForbiddenError extends FiretowerError {
}
/**
 * No answer in time: the gateway's `timeout` (the cluster did not answer) or the client's own
 * request timeout. The outcome is unknown: a publish may have been delivered.
 */
export class TimeoutError extends FiretowerError {
}
/** The cluster or a hook cannot serve the request now (`unavailable`, `hook_unavailable`, 4503). */
export class UnavailableError extends FiretowerError {
}
/** Too many requests or connections (`rate_limited`, `too_many_connections`, 4429). */
export class RateLimitedError extends FiretowerError {
}
/**
 * The connection closed before the answer came (`connection_closed`), or the client is
 * closed (`client_closed`). For a publish the outcome is unknown.
 */
export class ConnectionClosedError extends FiretowerError {
}
/** The error class for a protocol code. */
export function errorFor(code, message, details = {}) {
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
