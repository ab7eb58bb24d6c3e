"""When to refresh a JWT: read its ``exp`` without verifying it (the gateway verifies; the
client only needs to know when the token lapses)."""

from __future__ import annotations

import base64
import json

__all__ = ["expiry", "refresh_delay"]

#: Refresh no earlier than this before ``exp``: enough for a slow token endpoint.
MAX_LEAD_S = 60.0
#: ... and no later than this fraction of the remaining lifetime before it, so a token that
#: lives seconds (tests, very strict deployments) is still refreshed in time.
LEAD_FRACTION = 0.25


def expiry(token: str) -> float | None:
    """The token's ``exp`` (seconds since the epoch), or None when it is not a JWT with one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


def refresh_delay(exp: float, now: float) -> float:
    """Seconds from ``now`` until the token should be replaced: ``min(60 s, a quarter of what
    is left)`` before ``exp``; 0 when it lapsed already."""
    left = exp - now
    if left <= 0:
        return 0.0
    return left - min(MAX_LEAD_S, left * LEAD_FRACTION)
