"""Typed errors, one class per protocol error code or close code.

The gateway answers a refused request with ``{"op":"error","code":"<snake_case>",...}`` and
ends a connection with a close code. Both become a :class:`FiretowerError` subclass here, so
an application catches what it can handle (``except firetower.Forbidden``) and lets the rest
propagate. ``code`` always holds the gateway's snake_case code (or the SDK's own, for errors
that happen on this side: ``timeout``, ``connection_closed``, ``client_closed``).
"""

from __future__ import annotations

__all__ = [
    "Banned",
    "ClientClosed",
    "ConnectionClosed",
    "FiretowerError",
    "Forbidden",
    "FrameTooLarge",
    "InternalError",
    "InvalidRequest",
    "InvalidTopic",
    "NoHistory",
    "NotConfigured",
    "PresenceDisabled",
    "RateLimited",
    "Timeout",
    "TooManyConnections",
    "TooManyTopics",
    "Unauthorized",
    "Unavailable",
    "error_from_close",
    "error_from_frame",
]


class FiretowerError(Exception):
    """Something the gateway refused or the SDK could not do.

    ``code`` is the protocol's snake_case code; ``message`` the human text (what happened and
    what to do); ``close_code`` the WebSocket close code when the error ended a connection.
    """

    def __init__(self, code: str, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code

    def __str__(self) -> str:
        where = f", close {self.close_code}" if self.close_code is not None else ""
        return f"{self.message} ({self.code}{where})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class Unauthorized(FiretowerError):
    """No token, an invalid one, or one past its ``exp`` (close 4401). Get a new token."""


class Forbidden(FiretowerError):
    """The user may not use this topic (the connection stays), or was kicked (close 4403)."""


class Banned(Forbidden):
    """An operator banned the user or its address (close 4403): do not reconnect."""


class RateLimited(FiretowerError):
    """Too many requests; slow down and retry later."""


class TooManyConnections(RateLimited):
    """The user holds too many connections on this gateway (close 4429)."""


class Unavailable(FiretowerError):
    """The cluster (or a hook it needs) cannot serve now; retry with backoff."""


class Timeout(FiretowerError, TimeoutError):
    """No answer in time. The outcome is unknown: a publish may have been delivered, so do not
    re-send it blindly where duplicates matter."""


class InvalidRequest(FiretowerError):
    """The gateway could not take the request as sent (a bug in the caller or the SDK)."""


class InvalidTopic(InvalidRequest):
    """The topic name is refused (empty, over 256 bytes, whitespace or control characters)."""


class TooManyTopics(InvalidRequest):
    """The connection would hold more topics than the gateway's ``max_topics``."""


class FrameTooLarge(InvalidRequest):
    """A frame over the gateway's ``max_frame_bytes`` (close 1009)."""


class NotConfigured(FiretowerError):
    """The gateway does not offer this (an ``auth`` frame on a gateway without ``[auth]``)."""


class NoHistory(FiretowerError):
    """The topic has no history rule (``cluster history set``)."""


class PresenceDisabled(FiretowerError):
    """The topic has no presence rule (``cluster presence enable``)."""


class InternalError(FiretowerError):
    """The gateway failed on this request; it may work when retried."""


class ConnectionClosed(FiretowerError, ConnectionError):
    """The connection ended before the answer came. For a publish the outcome is unknown."""


class ClientClosed(ConnectionClosed):
    """:meth:`Client.close` was called, or the client stopped for good (4403, 4401 without a
    way to get a new token)."""


_BY_CODE: dict[str, type[FiretowerError]] = {
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "banned": Banned,
    "rate_limited": RateLimited,
    "too_many_connections": TooManyConnections,
    "unavailable": Unavailable,
    "timeout": Timeout,
    "invalid_json": InvalidRequest,
    "invalid_protobuf": InvalidRequest,
    "unknown_op": InvalidRequest,
    "missing_field": InvalidRequest,
    "invalid_field": InvalidRequest,
    "binary_on_json": InvalidRequest,
    "text_on_proto": InvalidRequest,
    "invalid_topic": InvalidTopic,
    "too_many_topics": TooManyTopics,
    "frame_too_large": FrameTooLarge,
    "not_configured": NotConfigured,
    "no_history": NoHistory,
    "presence_disabled": PresenceDisabled,
    "internal_error": InternalError,
}

_BY_CLOSE: dict[int, tuple[type[FiretowerError], str]] = {
    4401: (Unauthorized, "unauthorized"),
    4403: (Forbidden, "forbidden"),
    4429: (TooManyConnections, "too_many_connections"),
    4503: (Unavailable, "unavailable"),
    1009: (FrameTooLarge, "frame_too_large"),
}


def error_from_frame(code: str, message: str) -> FiretowerError:
    """The exception for an ``error`` frame; unknown codes give a plain FiretowerError."""
    return _BY_CODE.get(code, FiretowerError)(code, message)


def error_from_close(close_code: int | None, reason: str,
                     last_error: FiretowerError | None = None) -> FiretowerError:
    """The exception for a connection that ended with ``close_code`` (None: no close frame).

    ``last_error`` is the id-less error frame the gateway sent just before closing, if any
    (``banned`` before a 4403, ``unauthorized`` before a 4401): it names the cause better.
    """
    cls, code = _BY_CLOSE.get(close_code or 0, (ConnectionClosed, "connection_closed"))
    if last_error is not None and close_code in _BY_CLOSE and isinstance(last_error, cls):
        last_error.close_code = close_code
        return last_error
    text = reason or {
        None: "the connection was lost",
        1000: "the gateway closed the connection",
        1001: "the gateway is going away",
        1008: "the gateway closed the connection (slow consumer or too many refused requests)",
        4401: "the token is missing, invalid or expired",
        4403: "the user was kicked or banned",
        4429: "too many connections for this user",
        4503: "a hook the gateway needs is unavailable",
    }.get(close_code, f"the connection closed with code {close_code}")
    return cls(code, text, close_code=close_code)
