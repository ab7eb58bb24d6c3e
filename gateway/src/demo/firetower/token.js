/**
 * What the client needs to know about a JWT: when it expires, and so when to refresh it. The
 * token is decoded, never verified (the gateway verifies it; the client only schedules).
 */
/** Default margin before `exp` at which the client asks for a new token. */
export const DEFAULT_REFRESH_BEFORE_MS = 30_000;
/** The soonest a refresh is scheduled, so a token that is already stale does not spin. */
const MIN_REFRESH_DELAY_MS = 1_000;
/** The `exp` claim of a JWT in milliseconds since the epoch, or `undefined` if it has none. */
export function tokenExpiry(token) {
    const parts = token.split(".");
    if (parts.length !== 3 || parts[1] === undefined) {
        return undefined;
    }
    try {
        const claims = JSON.parse(base64UrlDecode(parts[1]));
        if (claims !== null && typeof claims === "object" && "exp" in claims) {
            const exp = claims.exp;
            if (typeof exp === "number" && Number.isFinite(exp)) {
                return exp * 1000;
            }
        }
    }
    catch {
        // Not a JWT we can read: no refresh is scheduled, the gateway's 4401 will tell.
    }
    return undefined;
}
/**
 * How long to wait before refreshing a token that expires at `expiresAt`: `refreshBeforeMs`
 * ahead of `exp`, but not before half of the remaining lifetime has passed (a 10 min token
 * with the default 30 s margin is refreshed after 9.5 min; a 4 s one after 2 s), and not
 * sooner than 1 s.
 */
export function refreshDelay(expiresAt, now, refreshBeforeMs) {
    const left = expiresAt - now;
    const delay = Math.max(left - refreshBeforeMs, left / 2);
    return Math.max(MIN_REFRESH_DELAY_MS, Math.floor(delay));
}
function base64UrlDecode(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const binary = atob(padded);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) {
        bytes[i] = binary.charCodeAt(i);
    }
    return new TextDecoder().decode(bytes);
}
