"""The JSON flavour of the client protocol: what goes on the wire, parsed into plain types.

No I/O here: :func:`parse` turns one text frame from the gateway into a typed event and the
``*_frame`` functions build the requests, so the whole codec is testable without a socket.

::

    gateway text frame ──parse──▶ Reply (has an id: ack, error, pong, history, presence)
                                  Message | Gap | Join | Leave | Notice (error without id)
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeGuard, Union

from ._errors import FiretowerError, error_from_frame

__all__ = [
    "Gap",
    "HistoryPage",
    "Join",
    "Leave",
    "Message",
    "Notice",
    "Position",
    "PresenceUser",
    "PublishResult",
    "Reply",
    "parse",
]

SUBPROTOCOL = "firetower.json"


class Position(NamedTuple):
    """Where a subscription is in a topic's history: the epoch and offset of the last message
    it took. An epoch changes only when the topic's history was lost."""

    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class Message:
    """A message published to a subscribed topic.

    ``data`` is the published JSON value (``bytes`` for a binary payload from a protobuf
    publisher). ``offset`` and ``epoch`` are set on topics with history, else None.
    """

    topic: str
    data: Any
    term: int
    seq: int
    offset: int | None = None
    epoch: str | None = None

    @property
    def position(self) -> Position | None:
        """The message's place in its topic's history, when the topic keeps one."""
        if self.offset is None or self.epoch is None:
            return None
        return Position(self.epoch, self.offset)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The acknowledgement of a publish: the topic's leader ordered it at ``(term, seq)``;
    ``offset``/``epoch`` on topics with history (the publish then is on a quorum). A gateway
    older than the protocol's term/seq acks leaves them None: the publish still succeeded."""

    term: int | None
    seq: int | None
    offset: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """What a topic's history keeps: the newest messages, oldest first. ``offset`` is the
    topic's latest offset (0 when nothing was published yet)."""

    topic: str
    epoch: str
    offset: int
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class PresenceUser:
    """A user subscribed to a topic, with how many of its connections are."""

    user: str
    connections: int


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of ``topic`` that this subscription will never see. ``local`` is False when the
    gateway dropped them for a slow connection, True when this SDK dropped them because the
    subscription's own queue was full (the application did not keep up)."""

    topic: str
    dropped: int
    local: bool = False


@dataclass(frozen=True, slots=True)
class Join:
    """A user's first connection subscribed to ``topic`` (``join_leave=True``)."""

    topic: str
    user: str


@dataclass(frozen=True, slots=True)
class Leave:
    """A user's last connection left ``topic`` (``join_leave=True``)."""

    topic: str
    user: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to request ``id``: its whole frame, or the error it was refused with."""

    id: int
    frame: dict[str, Any]
    error: FiretowerError | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """An error the gateway sent without a request id (a ban dropped a subscription, or the
    reason for the close that follows)."""

    error: FiretowerError


Event = Union[Reply, Message, Gap, Join, Leave, Notice]


class MalformedFrame(ValueError):
    """A frame from the gateway that this SDK cannot read (it is logged and skipped)."""


def parse(text: str | bytes) -> Event | None:
    """One frame from the gateway, typed. None for an op this SDK does not know (a newer
    gateway may send more); MalformedFrame for anything that is not the protocol."""
    try:
        frame = json.loads(text)
    except ValueError as e:
        raise MalformedFrame(f"not JSON: {e}") from None
    if not isinstance(frame, dict):
        raise MalformedFrame("not a JSON object")
    op = frame.get("op")
    if op == "message":
        return _message(frame)
    if op in ("join", "leave"):
        topic, user = frame.get("topic"), frame.get("user")
        if not isinstance(topic, str) or not isinstance(user, str):
            raise MalformedFrame(f"{op} without topic or user")
        return Join(topic, user) if op == "join" else Leave(topic, user)
    if op == "gap":
        topic, dropped = frame.get("topic"), frame.get("dropped")
        if not isinstance(topic, str) or not _is_int(dropped):
            raise MalformedFrame("gap without topic or dropped")
        return Gap(topic, dropped)
    rid = frame.get("id")
    if op == "error":
        err = error_from_frame(str(frame.get("code", "")), str(frame.get("message", "")))
        if _is_int(rid):
            return Reply(rid, frame, err)
        return Notice(err)
    if op in ("ack", "pong", "history", "presence"):
        if not _is_int(rid):
            raise MalformedFrame(f"{op} without id")
        return Reply(rid, frame)
    if not isinstance(op, str):
        raise MalformedFrame("no op")
    return None


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _message(frame: dict[str, Any]) -> Message:
    topic, term, seq = frame.get("topic"), frame.get("term"), frame.get("seq")
    if not isinstance(topic, str) or not _is_int(term) or not _is_int(seq) or "data" not in frame:
        raise MalformedFrame("message without topic, data, term or seq")
    data = frame["data"]
    if frame.get("encoding") == "base64" and isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except ValueError as e:
            raise MalformedFrame(f"message data is not base64: {e}") from None
    offset, epoch = frame.get("offset"), frame.get("epoch")
    if offset is not None and not _is_int(offset):
        raise MalformedFrame("message offset is not an integer")
    if epoch is not None and not isinstance(epoch, str):
        raise MalformedFrame("message epoch is not a string")
    return Message(topic, data, term, seq, offset, epoch)


def message_from(frame: Any) -> Message:
    """A message inside a history answer (same fields as a ``message`` frame)."""
    if not isinstance(frame, dict):
        raise MalformedFrame("history entry is not an object")
    return _message(frame)


def encode(frame: dict[str, Any]) -> str:
    """A request as one compact text frame."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def publish_result(frame: dict[str, Any]) -> PublishResult:
    """The fields of a publish ack (each None when absent or not of its type)."""
    term, seq, offset, epoch = (frame.get(k) for k in ("term", "seq", "offset", "epoch"))
    return PublishResult(term if _is_int(term) else None, seq if _is_int(seq) else None,
                         offset if _is_int(offset) else None,
                         epoch if isinstance(epoch, str) else None)


def history_page(frame: dict[str, Any]) -> HistoryPage:
    """The fields of a history answer."""
    topic, epoch, offset, messages = (frame.get("topic"), frame.get("epoch"), frame.get("offset"),
                                      frame.get("messages"))
    if not isinstance(topic, str) or not isinstance(messages, list):
        raise MalformedFrame("history answer without topic or messages")
    return HistoryPage(topic, epoch if isinstance(epoch, str) else "",
                       offset if _is_int(offset) else 0, [message_from(m) for m in messages])


def presence_users(frame: dict[str, Any]) -> list[PresenceUser]:
    """The fields of a presence answer."""
    users = frame.get("users")
    if not isinstance(users, list):
        raise MalformedFrame("presence answer without users")
    out = []
    for u in users:
        if not isinstance(u, dict) or not isinstance(u.get("user"), str):
            raise MalformedFrame("presence entry without user")
        n = u.get("connections")
        out.append(PresenceUser(u["user"], n if _is_int(n) else 1))
    return out
