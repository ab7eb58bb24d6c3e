"""Where each subscription is, the duplicate rule, and the resubscribe frames after a reconnect.

No I/O: plain data in, plain data out.

::

    message (offset N, epoch E) ──Cursor.admit──▶ new: position := (E, N), deliver
                                                  N <= last offset of epoch E: duplicate, drop
    reconnect ──resubscribe_frames──▶ [{"op":"subscribe","topics":[..],"recover":{t:{epoch,offset}}}]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from ._protocol import Message, Position

__all__ = ["Cursor", "ResubscribeEntry", "resubscribe_frames"]

#: A resubscribe frame stays below this many bytes of JSON. The gateway refuses frames over its
#: ``max_frame_bytes`` (64 KiB by default) with a close; a thousand long topic names with their
#: recover entries would pass that, so big sets go in several frames.
MAX_RESUBSCRIBE_FRAME_BYTES = 48 * 1024


class Cursor:
    """The epoch and offset of the last message a subscription took."""

    __slots__ = ("position",)

    def __init__(self, position: Position | None = None) -> None:
        self.position = position

    def admit(self, message: Message) -> bool:
        """True when ``message`` is new (and then it becomes the position); False for a
        duplicate: an offset at or below the last one seen in the same epoch. Messages of
        topics without history carry no offset and are always new."""
        pos = message.position
        if pos is None:
            return True
        last = self.position
        if last is not None and last.epoch == pos.epoch and pos.offset <= last.offset:
            return False
        self.position = pos
        return True


@dataclass(frozen=True, slots=True)
class ResubscribeEntry:
    """One subscription to restore: its topic, whether it wants join/leave events, and the
    position to recover from (None: a plain subscribe)."""

    topic: str
    join_leave: bool
    recover: Position | None


def resubscribe_frames(entries: Iterable[ResubscribeEntry],
                       max_bytes: int = MAX_RESUBSCRIBE_FRAME_BYTES) -> list[dict[str, Any]]:
    """The subscribe frames (without ``id``) that restore ``entries``: one frame in the usual
    case; one per ``join_leave`` setting, since the flag applies to a whole frame; more only when
    one would pass ``max_bytes``."""
    frames: list[dict[str, Any]] = []
    for join_leave in (False, True):
        group = [e for e in entries if e.join_leave == join_leave]
        frame: dict[str, Any] | None = None
        size = 0
        for e in group:
            cost = len(json.dumps(e.topic)) + 1
            if e.recover is not None:
                cost += len(json.dumps({e.topic: {"epoch": e.recover.epoch, "offset": e.recover.offset}}))
            if frame is None or size + cost > max_bytes:
                frame = {"op": "subscribe", "topics": []}
                if join_leave:
                    frame["join_leave"] = True
                frames.append(frame)
                # the frame's fixed part and its id
                size = 96
            frame["topics"].append(e.topic)
            if e.recover is not None:
                frame.setdefault("recover", {})[e.topic] = {"epoch": e.recover.epoch,
                                                            "offset": e.recover.offset}
            size += cost
    return frames
