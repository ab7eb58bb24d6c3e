"""The client: one WebSocket to a gateway at a time, requests matched to answers by id, and a
supervisor that reconnects, resubscribes and recovers when the connection is lost.

::

                 connect()                         link lost (not 4403, not close())
    ┌──────────┐ ────────▶ ┌────────────────────┐ ───────────────────────────▶ ┌─────────────┐
    │  closed  │           │ connected (a link: │                              │ backing off │
    └──────────┘ ◀──────── │ reader + refresher)│ ◀─── open next url, auth, ── │ full jitter │
          ▲      close(),  └────────────────────┘      resubscribe + recover   └─────────────┘
          └───── 4403, 4401 with no way to a new token ◀──────────────────────────────┘

A *link* is one WebSocket: its reader task parses every frame (answers resolve the pending
request of their id; messages go to their subscription), and when it ends it records why
(the close code, or the error the gateway sent just before closing). The supervisor waits for
that, then reconnects: 4401 first gets a new token; 4403 stops for good; anything else (4429,
4503, 1001, a lost socket) backs off and moves on to the next url.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence, TypeVar, Union

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from ._backoff import Backoff
from ._errors import (
    ClientClosed,
    ConnectionClosed,
    FiretowerError,
    Forbidden,
    InternalError,
    InvalidRequest,
    RateLimited,
    Timeout,
    Unauthorized,
    Unavailable,
    error_from_close,
)
from ._protocol import (
    SUBPROTOCOL,
    Gap,
    HistoryPage,
    Join,
    Leave,
    MalformedFrame,
    Message,
    Notice,
    PresenceUser,
    PublishResult,
    Reply,
    encode,
    history_page,
    parse,
    presence_users,
    publish_result,
)
from ._recovery import ResubscribeEntry, resubscribe_frames
from ._subscription import (
    DEFAULT_MAX_QUEUE,
    GapHandler,
    JoinHandler,
    LeaveHandler,
    MessageHandler,
    ResubscribeHandler,
    Subscription,
)
from ._token import expiry, refresh_delay

__all__ = ["Client", "TokenSource"]

log = logging.getLogger("firetower")

TokenSource = Union[str, Callable[[], Union[str, Awaitable[str]]]]
ErrorHandler = Callable[[FiretowerError], Any]

#: Deadline of one request (publish, subscribe, history, ...) when the call names none. The
#: gateway gives up on the cluster after 15 s by default and answers `timeout`; 10 s here keeps
#: an application responsive and is still far above a healthy cluster's milliseconds.
DEFAULT_REQUEST_TIMEOUT_S = 10.0
#: TCP + WebSocket handshake + auth answer of one connection attempt.
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: Largest frame taken from the gateway. Messages are at most the gateway's max_frame_bytes
#: (64 KiB by default) plus envelope; a history answer holds up to `limit` of them.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
#: WebSocket ping interval: finds a half-open connection (a gateway host that vanished without
#: a reset) within about twice this.
DEFAULT_PING_INTERVAL_S = 20.0
#: How long close() lets queued callbacks run.
CLOSE_DRAIN_S = 1.0
#: After a failed token refresh, try again this much later (the old token may still be valid).
REFRESH_RETRY_S = 1.0
#: A token that lapses sooner than this is replaced before it is used for a new connection.
RENEW_BEFORE_CONNECT_S = 5.0
#: Tries of one topic's resubscribe refused with rate_limited before the link is given up.
RESUBSCRIBE_RATE_LIMIT_TRIES = 5

#: Backoff's defaults; frozen, so one instance serves every client.
DEFAULT_BACKOFF = Backoff()

_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class _Pending:
    future: asyncio.Future[Reply]
    on_reply: Callable[[Reply], None] | None = None


@dataclass
class _Link:
    """One WebSocket and what is in flight on it."""

    ws: ClientConnection
    url: str
    opened_at: float
    pending: dict[int, _Pending] = field(default_factory=dict)
    ended: asyncio.Future[FiretowerError] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    last_notice: FiretowerError | None = None
    reader: asyncio.Task[None] | None = None
    refresher: asyncio.Task[None] | None = None


class Client:
    """A Firetower client. See the package docs for an example.

    - ``url`` or ``urls``: gateway WebSocket addresses (``ws://host:9090/ws``); the client
      connects to one at a time and moves on to the next whenever it reconnects.
    - ``token``: a JWT, or a function (plain or async) returning one, called for the first
      connection and whenever a new connection finds the token lapsed or refused (4401).
      None for a gateway that allows anonymous clients.
    - ``refresh_token``: a function (plain or async) returning a new JWT; called before the
      current token's ``exp`` (the new one is sent on the live connection) and after a 4401.
      Without it a callable ``token`` is used; with neither, the client cannot renew.
    - ``reconnect``: the :class:`Backoff` policy, or None to not reconnect (the client then
      stops when the connection is lost).
    - ``request_timeout``: default deadline of each request.
    - ``on_error``: called with errors that belong to no call: a subscription the gateway
      dropped, a failed token refresh, the error that stopped the client for good.
    """

    def __init__(self, url: str | None = None, *, urls: Sequence[str] | None = None,
                 token: TokenSource | None = None,
                 refresh_token: Callable[[], Union[str, Awaitable[str]]] | None = None,
                 reconnect: Backoff | None = DEFAULT_BACKOFF,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
                 max_queue: int = DEFAULT_MAX_QUEUE,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 ping_interval: float | None = DEFAULT_PING_INTERVAL_S,
                 on_error: ErrorHandler | None = None) -> None:
        all_urls = ([url] if url else []) + list(urls or [])
        if not all_urls:
            raise ValueError("Client needs a gateway url (url=...) or several (urls=[...])")
        for u in all_urls:
            if not u.startswith(("ws://", "wss://")):
                raise ValueError(f"gateway url {u!r} must start with ws:// or wss://")
        if request_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("request_timeout and connect_timeout must be above 0")
        self._urls = all_urls
        self._url_index = 0
        self._token_source = token
        self._refresh = refresh_token
        self._token: str | None = token if isinstance(token, str) else None
        self._backoff = reconnect
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._max_queue = max_queue
        self._max_frame_bytes = max_frame_bytes
        self._ping_interval = ping_interval
        self._on_error = on_error
        self._ids = itertools.count(1)
        self._subs: dict[str, Subscription] = {}
        self._link: _Link | None = None
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._stopped: FiretowerError | None = None
        self._wake_supervisor = asyncio.Event()
        self._background: set[asyncio.Future[Any]] = set()
        self.user: str | None = None
        """The user id the gateway took from the token (None without a token)."""
        self.reconnects = 0
        """How many times the client connected again after losing a connection."""

    # --- lifecycle ---

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while a connection is up (authenticated and resubscribed)."""
        return self._ready.is_set()

    @property
    def url(self) -> str | None:
        """The gateway url of the current connection."""
        return self._link.url if self._link is not None and self.connected else None

    async def connect(self) -> None:
        """Open the first connection, trying each url once in turn; raises the last error
        when none took it (Unauthorized and Forbidden at once: another url would say the
        same). From then on the client reconnects by itself until :meth:`close`."""
        if self._supervisor is not None:
            raise RuntimeError("Client.connect() was called already")
        if self._closing:
            raise ClientClosed("client_closed", "the client was closed")
        last: FiretowerError | None = None
        retried_token = False
        tries = len(self._urls)
        while tries > 0:
            url = self._next_url()
            try:
                link = await self._open(url)
            except Unauthorized:
                if retried_token or not self._can_renew():
                    raise
                retried_token = True
                self._token = await self._renew_token()
                self._url_index -= 1  # the same url again, with the new token
                continue
            except Forbidden:
                raise
            except FiretowerError as e:
                last = e
                tries -= 1
                continue
            self._adopt(link)
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name="firetower supervisor")
            return
        assert last is not None  # the loop ran at least once: there is at least one url
        raise last

    async def close(self) -> None:
        """Close the connection and end every subscription (iterators finish, queued callbacks
        run for up to a second). Requests still waiting raise ClientClosed."""
        if self._closing:
            return
        self._closing = True
        self._wake_supervisor.set()
        link = self._link
        if link is not None:
            await link.ws.close(1000, "client closed")
            if link.reader is not None:
                await asyncio.gather(link.reader, return_exceptions=True)
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        self._ready.clear()
        self._link = None
        await self._end_all(None)

    # --- requests ---

    async def subscribe(self, topic: str, *, on_message: MessageHandler | None = None,
                        on_gap: GapHandler | None = None, on_join: JoinHandler | None = None,
                        on_leave: LeaveHandler | None = None,
                        on_resubscribe: ResubscribeHandler | None = None,
                        recover: bool = True, join_leave: bool = False,
                        max_queue: int | None = None,
                        timeout: float | None = None) -> Subscription:
        """Subscribe to ``topic``; returns once the gateway acked it (every message ordered
        after that reaches this subscription). Without ``on_message``, iterate the returned
        subscription. ``recover``: after a reconnect, ask the gateway to replay what was
        missed (topics with history). ``join_leave``: also get join/leave events (topics with
        presence). Handlers may be plain or async functions; one subscription's run in order.
        """
        _check_topic(topic)
        if topic in self._subs:
            raise ValueError(f"already subscribed to {topic!r}; use that subscription")
        sub = Subscription(self, topic, recover=recover, join_leave=join_leave,
                           max_queue=max_queue or self._max_queue, on_message=on_message,
                           on_gap=on_gap, on_join=on_join, on_leave=on_leave,
                           on_resubscribe=on_resubscribe)
        # Registered before the request: messages may arrive before the ack.
        self._subs[topic] = sub
        frame: dict[str, Any] = {"op": "subscribe", "topics": [topic]}
        if join_leave:
            frame["join_leave"] = True

        def on_reply(reply: Reply) -> None:
            if reply.error is None:
                sub._activate()

        try:
            await self._request(frame, timeout, on_reply=on_reply)
        except BaseException as e:
            if self._subs.get(topic) is sub:
                del self._subs[topic]
            sub._end(None)
            await sub._join_dispatcher(0)
            if isinstance(e, Timeout):
                # The gateway may still take it: tell it we do not want the topic after all.
                self._send_quietly({"op": "unsubscribe", "topics": [topic]})
            raise
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.get(sub.topic) is sub:
            del self._subs[sub.topic]
        was_active = sub.active
        sub._end(None)
        if was_active and self.connected:
            try:
                await self._request({"op": "unsubscribe", "topics": [sub.topic]}, None)
            except (ConnectionClosed, Unavailable):
                pass  # no connection: no subscription left on the gateway either
        await sub._join_dispatcher(CLOSE_DRAIN_S)

    async def publish(self, topic: str, data: Any, *, timeout: float | None = None) -> PublishResult:
        """Publish ``data`` (any JSON value) to ``topic``; returns once the topic's leader
        ordered it. Timeout and ConnectionClosed mean the outcome is unknown."""
        _check_topic(topic)
        if isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("publish takes a JSON value; encode bytes yourself (e.g. base64)")
        reply = await self._request({"op": "publish", "topic": topic, "data": data}, timeout)
        return _decoded(publish_result, reply)

    async def history(self, topic: str, *, limit: int = 100,
                      timeout: float | None = None) -> HistoryPage:
        """The newest ``limit`` messages the topic's history keeps, oldest first, with the
        topic's epoch and latest offset. NoHistory when the topic has no history rule."""
        _check_topic(topic)
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        reply = await self._request({"op": "history", "topic": topic, "limit": limit}, timeout)
        return _decoded(history_page, reply)

    async def presence(self, topic: str, *, timeout: float | None = None) -> list[PresenceUser]:
        """Who is subscribed to ``topic`` on the whole cluster. PresenceDisabled when the topic
        has no presence rule."""
        _check_topic(topic)
        reply = await self._request({"op": "presence", "topic": topic}, timeout)
        return _decoded(presence_users, reply)

    async def ping(self, *, timeout: float | None = None) -> float:
        """Round trip to the gateway, in seconds."""
        started = time.monotonic()
        await self._request({"op": "ping"}, timeout)
        return time.monotonic() - started

    # --- the request machinery ---

    def _next_id(self) -> int:
        return next(self._ids)

    async def _request(self, frame: dict[str, Any], timeout: float | None, *,
                       link: _Link | None = None,
                       on_reply: Callable[[Reply], None] | None = None) -> Reply:
        """Send ``frame`` with a fresh id and wait for its answer. Waits for a connection first
        (within the same deadline) unless ``link`` names one."""
        limit = self._request_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        if link is None:
            link = await self._wait_link(limit)
        rid = self._next_id()
        frame["id"] = rid
        pending = _Pending(loop.create_future(), on_reply)
        link.pending[rid] = pending
        try:
            await asyncio.wait_for(link.ws.send(encode(frame)), max(0.0, deadline - loop.time()))
            reply = await asyncio.wait_for(pending.future, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise Timeout("timeout", f"no answer to {frame['op']} within {limit:g} s; "
                                     "the outcome is unknown") from None
        except websockets.ConnectionClosed:
            raise self._lost(link, frame["op"]) from None
        finally:
            link.pending.pop(rid, None)
        if reply.error is not None:
            raise reply.error
        return reply

    async def _wait_link(self, limit: float) -> _Link:
        if self._stopped is not None:
            raise ClientClosed("client_closed", f"the client stopped: {self._stopped}")
        if self._closing:
            raise ClientClosed("client_closed", "the client was closed")
        if self._supervisor is None:
            raise RuntimeError("call `await client.connect()` (or `async with client`) first")
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), limit)
            except asyncio.TimeoutError:
                raise Unavailable("unavailable", f"not connected to a gateway within {limit:g} s; "
                                                 "nothing was sent") from None
        if self._stopped is not None or self._closing or self._link is None:
            raise ClientClosed("client_closed", "the client was closed")
        return self._link

    def _lost(self, link: _Link, op: str) -> FiretowerError:
        why = link.ended.result() if link.ended.done() else None
        if self._closing:
            return ClientClosed("client_closed", f"the client was closed before {op} was answered")
        text = f"the connection closed before {op} was answered"
        if op == "publish":
            text += " (the outcome is unknown)"
        if why is not None:
            text += f": {why}"
        return ConnectionClosed("connection_closed", text,
                                close_code=why.close_code if why is not None else None)

    def _send_quietly(self, frame: dict[str, Any]) -> None:
        link = self._link
        if link is None or not self.connected:
            return
        frame["id"] = self._next_id()

        async def send() -> None:
            try:
                await link.ws.send(encode(frame))
            except websockets.ConnectionClosed:
                pass

        self._spawn(send())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        """Run a fire-and-forget coroutine, holding a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- one connection ---

    def _next_url(self) -> str:
        url = self._urls[self._url_index % len(self._urls)]
        self._url_index = (self._url_index + 1) % len(self._urls)
        return url

    async def _open(self, url: str) -> _Link:
        """Connect to ``url``, authenticate, resubscribe. Raises a FiretowerError on failure
        (Unavailable for the network and the handshake)."""
        token = await self._connection_token()
        try:
            ws = await ws_connect(url, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                                  compression=None, open_timeout=self._connect_timeout,
                                  max_size=self._max_frame_bytes,
                                  ping_interval=self._ping_interval, ping_timeout=self._ping_interval)
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as e:
            raise Unavailable("unavailable", f"could not connect to {url}: {e}") from e
        link = _Link(ws, url, asyncio.get_running_loop().time())
        link.reader = asyncio.get_running_loop().create_task(self._read(link),
                                                              name=f"firetower reader {url}")
        try:
            if token is not None:
                reply = await self._request({"op": "auth", "token": token},
                                            self._connect_timeout, link=link)
                user = reply.frame.get("user")
                self.user = user if isinstance(user, str) else None
            await self._resubscribe(link)
        except BaseException as e:
            await ws.close()
            await asyncio.gather(link.reader, return_exceptions=True)
            if isinstance(e, ConnectionClosed) and link.ended.done():
                # The gateway closed during the handshake: its reason (4401, 4403) is the error.
                raise link.ended.result() from None
            raise
        return link

    def _adopt(self, link: _Link) -> None:
        self._link = link
        self._ready.set()
        if self._token is not None and expiry(self._token) is not None:
            link.refresher = asyncio.get_running_loop().create_task(
                self._refresh_loop(link), name="firetower token refresh")

    async def _read(self, link: _Link) -> None:
        try:
            async for text in link.ws:
                try:
                    event = parse(text)
                except MalformedFrame as e:
                    log.warning("firetower: skipping a frame from %s: %s", link.url, e)
                    continue
                if event is not None:
                    self._dispatch(link, event)
        except websockets.ConnectionClosed:
            pass
        except Exception:
            log.exception("firetower: reading from %s failed", link.url)
            await link.ws.close(1011)
        finally:
            code = link.ws.close_code
            if code == 1006:
                code = None  # no close frame: the connection was lost
            why = error_from_close(code, link.ws.close_reason or "", link.last_notice)
            if not link.ended.done():
                link.ended.set_result(why)
            for pending in list(link.pending.values()):
                if not pending.future.done():
                    pending.future.set_exception(websockets.ConnectionClosed(None, None))
                    pending.future.exception()  # retrieved: the requester may be gone
            if self._link is link:
                self._ready.clear()
            self._wake_supervisor.set()

    def _dispatch(self, link: _Link, event: Any) -> None:
        if isinstance(event, Reply):
            pending = link.pending.get(event.id)
            if pending is None:
                return  # the requester gave up (timeout) or it was a fire-and-forget
            if pending.on_reply is not None:
                pending.on_reply(event)
            if not pending.future.done():
                pending.future.set_result(event)
        elif isinstance(event, (Message, Gap, Join, Leave)):
            sub = self._subs.get(event.topic)
            if sub is not None:
                sub._deliver(event)
        elif isinstance(event, Notice):
            self._notice(link, event.error)

    def _notice(self, link: _Link, error: FiretowerError) -> None:
        """An error without id: a subscription the gateway dropped (a topic ban), or the
        reason of a close that follows."""
        link.last_notice = error
        if isinstance(error, Forbidden) and error.code == "forbidden":
            for quoted in _QUOTED.findall(error.message):
                try:
                    topic = json.loads(f'"{quoted}"')
                except ValueError:
                    continue
                sub = self._subs.get(topic)
                if sub is not None:
                    del self._subs[topic]
                    sub._end(error)
                    self._report(error)
                    return
        if error.code not in ("unauthorized", "banned", "too_many_connections"):
            self._report(error)

    def _report(self, error: FiretowerError) -> None:
        if self._on_error is None:
            log.warning("firetower: %s", error)
            return
        try:
            result = self._on_error(error)
            if inspect.isawaitable(result):
                self._spawn(result)
        except Exception:
            log.exception("firetower: on_error raised")

    # --- resubscribe and recover ---

    async def _resubscribe(self, link: _Link) -> None:
        subs = [s for s in self._subs.values() if s.active]
        if not subs:
            return
        entries = [ResubscribeEntry(s.topic, s.join_leave, s.position if s.recover else None)
                   for s in subs]
        for frame in resubscribe_frames(entries):
            batch = [e for e in entries if e.topic in set(frame["topics"])]
            try:
                await self._request(frame, self._connect_timeout, link=link,
                                    on_reply=self._recovered_handler(batch))
            except (Forbidden, InvalidRequest):
                # One topic spoils the whole frame (a narrower token, a banned topic): find it
                # by asking topic by topic, and keep the rest.
                for entry in batch:
                    await self._resubscribe_one(link, entry)

    async def _resubscribe_one(self, link: _Link, entry: ResubscribeEntry) -> None:
        frame = resubscribe_frames([entry])[0]
        for attempt in range(RESUBSCRIBE_RATE_LIMIT_TRIES):
            try:
                await self._request(frame, self._connect_timeout, link=link,
                                    on_reply=self._recovered_handler([entry]))
                return
            except (Forbidden, InvalidRequest) as e:
                sub = self._subs.pop(entry.topic, None)
                if sub is not None:
                    sub._end(e)
                    self._report(e)
                return
            except RateLimited:
                await asyncio.sleep(1.0 + attempt)
        raise RateLimited("rate_limited", f"resubscribing {entry.topic!r} stayed rate limited")

    def _recovered_handler(self, batch: list[ResubscribeEntry]) -> Callable[[Reply], None]:
        # Runs in the reader, before any frame that follows the ack: a message replayed after
        # the ack already sees `recovered` set.
        def on_reply(reply: Reply) -> None:
            if reply.error is not None:
                return
            recovered = reply.frame.get("recovered")
            if not isinstance(recovered, dict):
                recovered = {}
            for entry in batch:
                sub = self._subs.get(entry.topic)
                if sub is not None:
                    sub._resubscribed(entry.recover is not None and recovered.get(entry.topic) is True)
        return on_reply

    # --- the supervisor: reconnect ---

    async def _supervise(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self._closing:
            link = self._link
            assert link is not None  # the supervisor runs only while a link is adopted or being replaced
            why = await link.ended
            self._ready.clear()
            if link.refresher is not None:
                link.refresher.cancel()
            if self._closing:
                return
            backoff = self._backoff
            if backoff is None:
                await self._stop(why)
                return
            if loop.time() - link.opened_at >= backoff.stable_after:
                attempt = 0
            log.info("firetower: connection to %s lost (%s); reconnecting", link.url, why)
            need_token = why.close_code == 4401
            if why.close_code == 4403:
                await self._stop(why)
                return
            while not self._closing:
                if need_token:
                    if not self._can_renew():
                        await self._stop(why)
                        return
                    try:
                        self._token = await self._renew_token()
                        need_token = False
                    except Exception as e:
                        log.warning("firetower: getting a new token failed: %s", e)
                delay = backoff.delay(attempt)
                attempt += 1
                self._wake_supervisor.clear()
                try:
                    await asyncio.wait_for(self._wake_supervisor.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                if self._closing:
                    return
                if need_token:
                    continue
                url = self._next_url()
                try:
                    new = await self._open(url)
                except Unauthorized as e:
                    why, need_token = e, True
                    continue
                except Forbidden as e:
                    await self._stop(e)
                    return
                except FiretowerError as e:
                    log.info("firetower: reconnecting to %s failed: %s", url, e)
                    continue
                except Exception:
                    # A bug here must not leave the client silently disconnected forever.
                    log.exception("firetower: reconnecting to %s failed unexpectedly", url)
                    continue
                self._adopt(new)
                self.reconnects += 1
                break

    async def _stop(self, why: FiretowerError) -> None:
        """Stop for good: no reconnect. Every subscription ends with ``why``."""
        self._stopped = why
        # Wake the requests waiting for a connection: they see _stopped and raise ClientClosed.
        self._ready.set()
        self._ready.clear()
        self._link = None
        self._report(why)
        await self._end_all(why)

    async def _end_all(self, why: FiretowerError | None) -> None:
        subs = list(self._subs.values())
        self._subs.clear()
        for s in subs:
            s._end(why)
        await asyncio.gather(*(s._join_dispatcher(CLOSE_DRAIN_S) for s in subs))

    # --- tokens ---

    def _can_renew(self) -> bool:
        return self._refresh is not None or callable(self._token_source)

    async def _renew_token(self) -> str:
        # The first token comes from `token` when it is a function; later ones from
        # `refresh_token` when given.
        source = self._refresh if self._refresh is not None and self._token is not None else None
        if source is None:
            source = self._token_source if callable(self._token_source) else self._refresh
        assert callable(source)  # _can_renew() was checked by every caller
        token = source()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token:
            raise TypeError(f"the token function returned {type(token).__name__}, not a JWT string")
        return token

    async def _connection_token(self) -> str | None:
        """The token for a new connection: the current one, or a new one when there is none
        yet or the current one lapses within RENEW_BEFORE_CONNECT_S."""
        token = self._token
        if not self._can_renew():
            return token
        exp = expiry(token) if token is not None else None
        if token is not None and (exp is None or exp - time.time() >= RENEW_BEFORE_CONNECT_S):
            return token
        try:
            self._token = token = await self._renew_token()
        except Exception as e:
            if token is not None and exp is not None and exp > time.time():
                return token  # about to lapse, but still good: the refresher tries again
            raise Unauthorized("unauthorized", f"getting a token failed: {e!r}") from e
        return token

    async def _refresh_loop(self, link: _Link) -> None:
        """Replace the token on the live connection before it lapses."""
        while True:
            token = self._token
            exp = expiry(token) if token is not None else None
            if exp is None or not self._can_renew():
                return
            await asyncio.sleep(refresh_delay(exp, time.time()))
            try:
                new = await self._renew_token()
            except Exception as e:
                self._report(Unauthorized("unauthorized", f"getting a new token failed: {e}"))
                await asyncio.sleep(REFRESH_RETRY_S)
                continue
            self._token = new
            try:
                await self._request({"op": "auth", "token": new}, None, link=link)
            except ConnectionClosed:
                return
            except FiretowerError as e:
                self._report(e)
                if isinstance(e, InternalError | Timeout | Unavailable):
                    await asyncio.sleep(REFRESH_RETRY_S)
                    continue
                return


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"a topic is a non-empty string, not {topic!r}")


_T = TypeVar("_T")


def _decoded(decode: Callable[[dict[str, Any]], _T], reply: Reply) -> _T:
    try:
        return decode(reply.frame)
    except MalformedFrame as e:
        raise InvalidRequest("invalid_reply", f"the gateway's answer is not understood: {e}") from None
