"""Firetower client for asyncio: subscribe, publish, history and presence over a gateway's
WebSocket, with reconnect (exponential backoff, full jitter), resubscribe and recovery.

The entry point is :class:`Client`::

    import firetower

    async with firetower.Client("ws://127.0.0.1:9090/ws", token=jwt) as client:
        sub = await client.subscribe("room.1")
        await client.publish("room.1", {"text": "hi"})
        async for message in sub:
            print(message.data)

What it does not do: verify tokens (the gateway does; the client reads ``exp`` only to renew
in time), speak the protobuf flavour or the raw TCP port, or keep unbounded buffers (each
subscription queues at most ``max_queue`` messages, dropping the oldest; see
:class:`Subscription`).
"""

from ._backoff import Backoff
from ._client import Client, TokenSource
from ._errors import (
    Banned,
    ClientClosed,
    ConnectionClosed,
    FiretowerError,
    Forbidden,
    FrameTooLarge,
    InternalError,
    InvalidRequest,
    InvalidTopic,
    NoHistory,
    NotConfigured,
    PresenceDisabled,
    RateLimited,
    Timeout,
    TooManyConnections,
    TooManyTopics,
    Unauthorized,
    Unavailable,
)
from ._protocol import Gap, HistoryPage, Join, Leave, Message, Position, PresenceUser, PublishResult
from ._subscription import Subscription

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "Banned",
    "Client",
    "ClientClosed",
    "ConnectionClosed",
    "FiretowerError",
    "Forbidden",
    "FrameTooLarge",
    "Gap",
    "HistoryPage",
    "InternalError",
    "InvalidRequest",
    "InvalidTopic",
    "Join",
    "Leave",
    "Message",
    "NoHistory",
    "NotConfigured",
    "Position",
    "PresenceDisabled",
    "PresenceUser",
    "PublishResult",
    "RateLimited",
    "Subscription",
    "Timeout",
    "TokenSource",
    "TooManyConnections",
    "TooManyTopics",
    "Unauthorized",
    "Unavailable",
]
