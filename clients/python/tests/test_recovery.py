"""History, recovery and presence against a real cluster, to the protocol contract
(docs/clients.md, "Python"): offsets and epochs on history topics, `recover` on resubscribe,
`history`, `presence` and join/leave events."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

import firetower
from conftest import eventually, token, within, ws_url


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


#: Reconnect quickly: the tests decide how long the client is away by when they restart its
#: gateway (it has only that one url).
FAST = firetower.Backoff(initial=0.2, max=0.5)


@pytest.fixture(scope="module")
def rules(cluster, admin, gateway):
    """History on chat.* (100 messages) and small.* (2), presence on here.*; waits until a
    gateway applies the history rules."""
    admin("history", "set", "chat.*", "--size", "100", "--ttl", "10m")
    admin("history", "set", "small.*", "--size", "2", "--ttl", "10m")
    admin("presence", "enable", "here.*")

    async def applied() -> None:
        # Best effort: a gateway without the feature fails the tests themselves, by name.
        async with firetower.Client(ws_url(gateway), token=token("probe")) as c:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if (await c.publish(unique("chat"), "probe")).offset is not None:
                    return
                await asyncio.sleep(0.2)

    asyncio.run(applied())


async def test_history_topics_carry_offsets_and_an_epoch(gateway, rules):
    topic = unique("chat")
    async with firetower.Client(ws_url(gateway), token=token("ann")) as client:
        sub = await client.subscribe(topic)
        results = [await client.publish(topic, i) for i in range(3)]
        assert [r.offset for r in results] == [1, 2, 3]
        epoch = results[0].epoch
        assert isinstance(epoch, str) and epoch and all(r.epoch == epoch for r in results)
        got = [await within(sub.__anext__()) for _ in range(3)]
        assert [(m.offset, m.epoch, m.data) for m in got] == [(1, epoch, 0), (2, epoch, 1), (3, epoch, 2)]
        assert sub.position == firetower.Position(epoch, 3)
        # A topic without a history rule has neither.
        plain = unique("room")
        r = await client.publish(plain, 1)
        assert r.offset is None and r.epoch is None


async def test_history_returns_the_newest_oldest_first(gateway, rules):
    topic = unique("chat")
    async with firetower.Client(ws_url(gateway), token=token("ben")) as client:
        empty = await client.history(topic)
        assert empty.offset == 0 and empty.messages == []
        results = [await client.publish(topic, {"n": i}) for i in range(5)]
        page = await client.history(topic, limit=3)
        assert page.topic == topic and page.epoch == results[0].epoch and page.offset == 5
        assert [m.offset for m in page.messages] == [3, 4, 5]
        assert [m.data for m in page.messages] == [{"n": 2}, {"n": 3}, {"n": 4}]
        assert [(m.term, m.seq) for m in page.messages] == [(r.term, r.seq) for r in results[2:]]
        assert all(m.topic == topic and m.epoch == page.epoch for m in page.messages)
        with pytest.raises(firetower.NoHistory):
            await client.history(unique("room"))


async def test_reconnect_recovers_what_was_missed_in_order_without_duplicates(
        gateway_pair, forgotten, restart, rules):
    a, b = gateway_pair
    topic = unique("chat")
    plain = unique("room")
    recovered_calls: list[bool] = []
    client = firetower.Client(a.url, token=token("cat"), reconnect=FAST)
    async with client, firetower.Client(b.url, token=token("pub")) as pub:
        sub = await client.subscribe(topic, on_resubscribe=recovered_calls.append)
        plain_sub = await client.subscribe(plain)
        for i in range(1, 4):
            await pub.publish(topic, i)
        got = [await within(sub.__anext__()) for _ in range(3)]
        epoch = got[0].epoch
        assert [m.offset for m in got] == [1, 2, 3] and sub.position == (epoch, 3)
        a.proc.kill()
        a.proc.wait()
        await eventually(lambda: not client.connected, what="the loss noticed")
        await forgotten(topic, a)
        for i in range(4, 7):  # published while the client is away
            await pub.publish(topic, i)
        assert not client.connected
        await restart(a)
        await eventually(lambda: client.connected, what="reconnected")
        assert sub.recovered is True
        assert plain_sub.recovered is False  # no history there: missed messages are gone
        await eventually(lambda: recovered_calls == [True], what="on_resubscribe(True)")
        await pub.publish(topic, 7)
        got = [await within(sub.__anext__()) for _ in range(4)]
        assert [(m.offset, m.data) for m in got] == [(4, 4), (5, 5), (6, 6), (7, 7)]
        assert sub.position == (epoch, 7)


async def test_recovery_past_the_window_is_reported_false_and_only_new_messages_follow(
        gateway_pair, forgotten, restart, rules):
    a, b = gateway_pair
    topic = unique("small")
    client = firetower.Client(a.url, token=token("dan"), reconnect=FAST)
    async with client, firetower.Client(b.url, token=token("pub")) as pub:
        sub = await client.subscribe(topic)
        await pub.publish(topic, 1)
        assert (await within(sub.__anext__())).offset == 1
        a.proc.kill()
        a.proc.wait()
        await eventually(lambda: not client.connected, what="the loss noticed")
        await forgotten(topic, a)
        for i in range(2, 7):  # five missed; history keeps only the last two (5, 6)
            await pub.publish(topic, i)
        assert not client.connected
        await restart(a)
        await eventually(lambda: client.connected, what="reconnected")
        await pub.publish(topic, 7)
        m = await within(sub.__anext__())
        replayed = [m.offset]
        while m.offset != 7:
            m = await within(sub.__anext__())
            replayed.append(m.offset)
        assert sub.recovered is False, f"recovered from offset 1 with a window of 2; got {replayed}"
        assert replayed == [7]


async def test_recover_false_subscribes_plainly(gateway_pair, forgotten, restart, rules):
    a, b = gateway_pair
    topic = unique("chat")
    client = firetower.Client(a.url, token=token("eli"), reconnect=FAST)
    async with client, firetower.Client(b.url, token=token("pub")) as pub:
        sub = await client.subscribe(topic, recover=False)
        await pub.publish(topic, 1)
        assert (await within(sub.__anext__())).offset == 1
        a.proc.kill()
        a.proc.wait()
        await eventually(lambda: not client.connected, what="the loss noticed")
        await forgotten(topic, a)
        await pub.publish(topic, 2)
        assert not client.connected
        await restart(a)
        await eventually(lambda: client.connected, what="reconnected")
        assert sub.recovered is False
        await pub.publish(topic, 3)
        assert (await within(sub.__anext__())).offset == 3


async def test_presence_lists_users_and_join_leave_events_arrive(gateway, rules):
    topic = unique("here")
    joins: list[firetower.Join] = []
    leaves: list[firetower.Leave] = []
    async with firetower.Client(ws_url(gateway), token=token("u-watch")) as watcher:
        deadline = time.monotonic() + 10
        while True:  # the presence rule reaches the gateway shortly after the command
            try:
                await watcher.presence(topic)
                break
            except firetower.PresenceDisabled:
                assert time.monotonic() < deadline, "presence on here.* is not served"
                await asyncio.sleep(0.2)
        await watcher.subscribe(topic, join_leave=True, on_join=joins.append, on_leave=leaves.append)
        other = firetower.Client(ws_url(gateway), token=token("u-visit"))
        await other.connect()
        await other.subscribe(topic)
        await eventually(lambda: any(j.user == "u-visit" for j in joins), what="join of u-visit")
        users = {u.user: u.connections for u in await watcher.presence(topic)}
        assert users == {"u-watch": 1, "u-visit": 1}
        await other.close()
        await eventually(lambda: any(lv.user == "u-visit" for lv in leaves), what="leave of u-visit")
        assert all(j.topic == topic for j in joins) and [lv.user for lv in leaves] == ["u-visit"]
        users = {u.user for u in await watcher.presence(topic)}
        assert users == {"u-watch"}
        with pytest.raises(firetower.PresenceDisabled):
            await watcher.presence(unique("room"))
