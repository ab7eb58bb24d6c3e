"""Reconnect delays: exponential backoff with full jitter.

``delay(attempt) = uniform(0, min(max, initial * 2**attempt))``. Full jitter spreads a crowd of
clients that lost the same gateway over the whole window instead of bunching them at its edges
(what a reconnect storm needs). The attempt count goes back to zero once a connection stayed up
for ``stable_after`` seconds, so a client that lost a long-lived connection retries fast.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]

#: First window: a lost connection is retried within half a second.
DEFAULT_INITIAL_S = 0.5
#: Widest window: 30 s keeps a storm of clients against a recovering cluster spread out while a
#: single client still comes back within half a minute.
DEFAULT_MAX_S = 30.0
#: A connection that lived this long counts as healthy: the next loss starts over at ``initial``.
DEFAULT_STABLE_AFTER_S = 10.0


@dataclass(frozen=True)
class Backoff:
    """How long to wait before reconnect attempt number ``attempt`` (0-based)."""

    initial: float = DEFAULT_INITIAL_S
    max: float = DEFAULT_MAX_S
    stable_after: float = DEFAULT_STABLE_AFTER_S
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError(f"Backoff.initial must be above 0, not {self.initial}")
        if self.max < self.initial:
            raise ValueError(f"Backoff.max ({self.max}) must be at least initial ({self.initial})")
        if self.stable_after < 0:
            raise ValueError(f"Backoff.stable_after must not be negative, not {self.stable_after}")

    def ceiling(self, attempt: int) -> float:
        """The upper end of the window for ``attempt``."""
        # Cap the exponent: 2**attempt for a client retrying for days would overflow a float.
        return min(self.max, self.initial * 2.0 ** min(attempt, 64))

    def delay(self, attempt: int) -> float:
        """A random delay in ``[0, ceiling(attempt)]``."""
        return self.rng.uniform(0.0, self.ceiling(attempt))
