/**
 * Reconnect delays: exponential backoff with full jitter. Attempt `n` (0 for the first retry)
 * waits a uniformly random time in `[0, min(maxMs, initialMs * 2^n))`, so a crowd of clients
 * cut off at once spreads its reconnects over the whole window instead of coming back in
 * waves. The attempt count goes back to 0 once a connection has stayed up for `stableMs`.
 */
/** Default first window: short enough that a blip is invisible to a user. */
export const DEFAULT_INITIAL_MS = 500;
/** Default largest window: a gateway restart takes seconds; a long outage need not be polled faster. */
export const DEFAULT_MAX_MS = 30_000;
/** Default time up after which a connection counts as stable. */
export const DEFAULT_STABLE_MS = 10_000;
/** The backoff state of one client. `random` is injectable for tests. */
export class Backoff {
    random;
    initialMs;
    maxMs;
    stableMs;
    attempt = 0;
    constructor(options = {}, random = Math.random) {
        this.random = random;
        this.initialMs = positive(options.initialMs, DEFAULT_INITIAL_MS);
        this.maxMs = Math.max(this.initialMs, positive(options.maxMs, DEFAULT_MAX_MS));
        this.stableMs = positive(options.stableMs, DEFAULT_STABLE_MS);
    }
    /** The number of delays handed out since the last reset. */
    get attempts() {
        return this.attempt;
    }
    /** The upper bound of the next delay's window. */
    window() {
        // 2^attempt overflows to Infinity long after it passed maxMs; min() keeps it finite.
        return Math.min(this.maxMs, this.initialMs * 2 ** this.attempt);
    }
    /** The next delay, in milliseconds; each call widens the window. */
    next() {
        const delay = Math.floor(this.random() * this.window());
        this.attempt = Math.min(this.attempt + 1, 64);
        return delay;
    }
    /** Back to the first window (after a stable connection). */
    reset() {
        this.attempt = 0;
    }
}
function positive(value, fallback) {
    return typeof value === "number" && Number.isFinite(value) && value > 0 ? value : fallback;
}
