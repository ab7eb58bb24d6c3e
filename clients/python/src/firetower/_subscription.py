"""One subscription: its position, its bounded queues, and how it hands messages to the
application (callbacks on a task of its own, or ``async for``).

::

    reader ──deliver──▶ Cursor.admit ──dup──▶ dropped (counted in .duplicates)
                              │new
             on_message given ▼ no on_message
          events deque (bounded) inbox deque (bounded) ◀── async for message in sub
                  │
       dispatcher task: on_message / on_gap / on_join / on_leave / on_resubscribe, in order

Memory is bounded: each deque holds at most ``max_queue`` entries. When one is full the oldest
entry is dropped (the freshest data wins, as a real-time feed wants), counted in ``dropped``
and reported through ``on_gap`` as ``Gap(local=True)`` before the next entry is handled.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, Union

from ._errors import FiretowerError
from ._protocol import Gap, Join, Leave, Message, Position
from ._recovery import Cursor

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Subscription"]

log = logging.getLogger("firetower")

#: Entries a subscription queues for the application before it drops the oldest: about a
#: second of a busy chat room, and at most ~1,024 * 64 KiB (the gateway's frame limit) held.
DEFAULT_MAX_QUEUE = 1024

MessageHandler = Callable[[Message], Union[None, Awaitable[None]]]
GapHandler = Callable[[Gap], Union[None, Awaitable[None]]]
JoinHandler = Callable[[Join], Union[None, Awaitable[None]]]
LeaveHandler = Callable[[Leave], Union[None, Awaitable[None]]]
ResubscribeHandler = Callable[[bool], Union[None, Awaitable[None]]]


class _Resubscribed:
    __slots__ = ("recovered",)

    def __init__(self, recovered: bool) -> None:
        self.recovered = recovered


State = Literal["pending", "active", "ended"]


class Subscription:
    """A topic this client is subscribed to. Made by :meth:`Client.subscribe`.

    Iterate it (``async for message in sub``) when no ``on_message`` was given. Attributes:

    - ``position``: the (epoch, offset) of the last message taken, or None (topics without
      history carry no offset).
    - ``recovered``: None until the first reconnect; then, after each resubscribe, True when
      the gateway replayed every message missed while disconnected, False when it could not
      (or recovery was off): those messages are gone and the application should refetch its
      state.
    - ``dropped``: messages dropped because the application did not keep up (queue full).
    - ``duplicates``: messages dropped because they were already seen (recovery overlap).
    - ``error``: why the subscription ended, when the gateway ended it (a ban, a 4403).
    """

    def __init__(self, client: Client, topic: str, *, recover: bool, join_leave: bool,
                 max_queue: int, on_message: MessageHandler | None, on_gap: GapHandler | None,
                 on_join: JoinHandler | None, on_leave: LeaveHandler | None,
                 on_resubscribe: ResubscribeHandler | None) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {max_queue}")
        self.topic = topic
        self.recover = recover
        self.join_leave = join_leave
        self.recovered: bool | None = None
        self.dropped = 0
        self.duplicates = 0
        self.error: FiretowerError | None = None
        self._client = client
        self._cursor = Cursor()
        self._state: State = "pending"
        self._max_queue = max_queue
        self._on_message = on_message
        self._on_gap = on_gap
        self._on_join = on_join
        self._on_leave = on_leave
        self._on_resubscribe = on_resubscribe
        self._inbox: deque[Message] = deque()
        self._inbox_ready = asyncio.Event()
        self._events: deque[Message | Gap | Join | Leave | _Resubscribed] = deque()
        self._events_ready = asyncio.Event()
        self._unreported_drops = 0
        self._dispatcher: asyncio.Task[None] | None = None
        if any(h is not None for h in (on_message, on_gap, on_join, on_leave, on_resubscribe)):
            self._dispatcher = asyncio.get_running_loop().create_task(
                self._dispatch(), name=f"firetower dispatch {topic}")

    def __repr__(self) -> str:
        return (f"Subscription(topic={self.topic!r}, state={self._state!r}, "
                f"position={self.position!r}, recovered={self.recovered!r})")

    @property
    def position(self) -> Position | None:
        """The epoch and offset of the last message this subscription took."""
        return self._cursor.position

    @property
    def active(self) -> bool:
        """True from the subscribe ack until it ends."""
        return self._state == "active"

    async def unsubscribe(self) -> None:
        """Stop receiving this topic. Iteration ends; queued callbacks still run."""
        await self._client._unsubscribe(self)

    def __aiter__(self) -> Subscription:
        if self._on_message is not None:
            raise TypeError(f"subscription to {self.topic!r} delivers to on_message; "
                            "iterate a subscription made without on_message")
        return self

    async def __anext__(self) -> Message:
        while not self._inbox:
            if self._state == "ended":
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            self._inbox_ready.clear()
            await self._inbox_ready.wait()
        return self._inbox.popleft()

    # --- fed by the client (its reader task), never blocking ---

    def _activate(self) -> None:
        if self._state == "pending":
            self._state = "active"

    def _deliver(self, event: Message | Gap | Join | Leave) -> None:
        if self._state == "ended":
            return
        if isinstance(event, Message):
            if not self._cursor.admit(event):
                self.duplicates += 1
                return
            if self._on_message is None:
                self._push(self._inbox, event, self._inbox_ready)
                return
            self._push(self._events, event, self._events_ready)
        elif isinstance(event, Gap):
            if self._on_gap is not None:
                self._push(self._events, event, self._events_ready)
        elif isinstance(event, Join):
            if self._on_join is not None:
                self._push(self._events, event, self._events_ready)
        elif self._on_leave is not None:
            self._push(self._events, event, self._events_ready)

    def _resubscribed(self, recovered: bool) -> None:
        self.recovered = recovered
        if self._on_resubscribe is not None and self._state != "ended":
            self._push(self._events, _Resubscribed(recovered), self._events_ready)

    def _end(self, error: FiretowerError | None) -> None:
        if self._state == "ended":
            return
        self._state = "ended"
        self.error = error
        self._inbox_ready.set()
        self._events_ready.set()

    async def _join_dispatcher(self, timeout: float) -> None:
        """Wait for queued callbacks to run (at most ``timeout``), then stop the dispatcher."""
        task = self._dispatcher
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _push(self, queue: deque[Any], item: Any, ready: asyncio.Event) -> None:
        if len(queue) >= self._max_queue:
            old = queue.popleft()
            if isinstance(old, Message):
                self.dropped += 1
                self._unreported_drops += 1
                self._events_ready.set()
        queue.append(item)
        ready.set()

    async def _dispatch(self) -> None:
        while True:
            if self._unreported_drops and self._on_gap is not None:
                gap = Gap(self.topic, self._unreported_drops, local=True)
                self._unreported_drops = 0
                await self._call(self._on_gap, gap)
                continue
            if not self._events:
                if self._state == "ended":
                    return
                self._events_ready.clear()
                await self._events_ready.wait()
                continue
            ev = self._events.popleft()
            if isinstance(ev, Message):
                await self._call(self._on_message, ev)
            elif isinstance(ev, Gap):
                await self._call(self._on_gap, ev)
            elif isinstance(ev, Join):
                await self._call(self._on_join, ev)
            elif isinstance(ev, Leave):
                await self._call(self._on_leave, ev)
            else:
                await self._call(self._on_resubscribe, ev.recovered)

    async def _call(self, handler: Callable[[Any], Any] | None, arg: Any) -> None:
        if handler is None:
            return
        try:
            result = handler(arg)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            # An application bug in one handler must not stop the subscription.
            log.exception("firetower: a handler of the subscription to %r raised", self.topic)
