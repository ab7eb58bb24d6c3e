"""The SDK against a real cluster: connect, subscribe, publish, receive, typed errors,
token refresh, reconnect and resubscribe."""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest

import firetower
import firetower._client
from conftest import eventually, token, within, ws_url


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


class Highest:
    """An rng for Backoff that always picks the top of the window: a known reconnect delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_subscribe_publish_receive_by_iteration(gateway):
    topic = unique("room")
    async with firetower.Client(ws_url(gateway), token=token("alice")) as client:
        assert client.connected and client.user == "alice"
        sub = await client.subscribe(topic)
        assert sub.active and sub.recovered is None
        for i in range(5):
            await client.publish(topic, {"n": i})
        got = [await within(sub.__anext__()) for _ in range(5)]
        assert [m.data for m in got] == [{"n": i} for i in range(5)]
        assert [(m.term, m.seq) for m in got] == sorted((m.term, m.seq) for m in got)
        assert all(m.topic == topic and m.offset is None for m in got)
        assert await client.ping() < 5
        await sub.unsubscribe()
        assert not sub.active
        with pytest.raises(StopAsyncIteration):
            await sub.__anext__()


async def test_publish_ack_carries_the_messages_term_and_seq(gateway):
    topic = unique("room")
    async with firetower.Client(ws_url(gateway), token=token("alice")) as client:
        sub = await client.subscribe(topic)
        results = [await client.publish(topic, i) for i in range(3)]
        assert all(isinstance(r.term, int) and isinstance(r.seq, int) for r in results), results
        got = [await within(sub.__anext__()) for _ in range(3)]
        assert [(m.term, m.seq) for m in got] == [(r.term, r.seq) for r in results]


async def test_callbacks_run_in_order_plain_and_async(gateway):
    topic = unique("room")
    seen: list[int] = []
    async_seen: list[int] = []

    async def slow(m: firetower.Message) -> None:
        await asyncio.sleep(0.001)
        async_seen.append(m.data)

    async with firetower.Client(ws_url(gateway), token=token("bob")) as client:
        await client.subscribe(topic, on_message=lambda m: seen.append(m.data))
        other = unique("room")
        await client.subscribe(other, on_message=slow)
        for i in range(30):
            await client.publish(topic, i)
            await client.publish(other, i)
        await eventually(lambda: len(seen) == 30 and len(async_seen) == 30, what="30 callbacks each")
        assert seen == list(range(30)) and async_seen == list(range(30))
        with pytest.raises(ValueError):
            await client.subscribe(topic)


async def test_iterating_a_callback_subscription_is_refused(gateway):
    async with firetower.Client(ws_url(gateway), token=token("bob")) as client:
        sub = await client.subscribe(unique("room"), on_message=lambda m: None)
        with pytest.raises(TypeError):
            sub.__aiter__()


async def test_forbidden_topics_raise_and_the_connection_stays(gateway):
    limited = token("carol", subscribe=("room.*",), publish=("room.*",))
    async with firetower.Client(ws_url(gateway), token=limited) as client:
        with pytest.raises(firetower.Forbidden) as e:
            await client.subscribe("chat.1")
        assert e.value.code == "forbidden" and "chat.1" in e.value.message
        with pytest.raises(firetower.Forbidden):
            await client.publish("chat.1", {"x": 1})
        # The refused subscription left nothing behind: the same topic can be tried again.
        with pytest.raises(firetower.Forbidden):
            await client.subscribe("chat.1")
        sub = await client.subscribe("room.ok")
        await client.publish("room.ok", 1)
        assert (await within(sub.__anext__())).data == 1
        assert client.connected


async def test_invalid_topic_is_a_typed_error(gateway):
    async with firetower.Client(ws_url(gateway), token=token("dave")) as client:
        with pytest.raises(firetower.InvalidTopic):
            await client.publish("has space", 1)
        with pytest.raises(firetower.InvalidTopic):
            await client.subscribe("x" * 300)
        assert await client.ping() >= 0


async def test_bad_and_expired_tokens_are_unauthorized(gateway):
    for bad in ["not-a-jwt", token("eve", ttl=-30)]:
        client = firetower.Client(ws_url(gateway), token=bad)
        with pytest.raises(firetower.Unauthorized) as e:
            await within(client.connect())
        assert e.value.code == "unauthorized"
        await client.close()


async def test_a_refused_token_is_renewed_once_at_connect(gateway):
    calls = []

    async def fresh() -> str:
        calls.append(1)
        return token("frank")

    async with firetower.Client(ws_url(gateway), token=token("frank", ttl=-30), refresh_token=fresh) as c:
        assert c.user == "frank" and calls == [1]


async def test_no_gateway_reachable_is_unavailable():
    client = firetower.Client(urls=["ws://127.0.0.1:9/ws", "ws://127.0.0.1:1/ws"], token=token("x"))
    with pytest.raises(firetower.Unavailable):
        await within(client.connect())
    await client.close()


async def test_requests_before_connect_and_after_close(gateway):
    client = firetower.Client(ws_url(gateway), token=token("gina"))
    with pytest.raises(RuntimeError):
        await client.publish("room.1", 1)
    await client.connect()
    await client.close()
    with pytest.raises(firetower.ClientClosed):
        await client.publish("room.1", 1)


async def test_a_request_past_its_deadline_is_timeout_and_the_client_goes_on(gateway):
    async with firetower.Client(ws_url(gateway), token=token("hank")) as client:
        with pytest.raises(firetower.Timeout) as e:
            await client.publish(unique("room"), 1, timeout=0)
        assert "outcome is unknown" in e.value.message and isinstance(e.value, TimeoutError)
        await client.publish(unique("room"), 2)


async def test_token_is_refreshed_on_the_live_connection_before_exp(gateway):
    refreshed = []

    async def refresh() -> str:
        refreshed.append(1)
        return token("ivan", ttl=120)

    topic = unique("room")
    async with firetower.Client(ws_url(gateway), token=token("ivan", ttl=3), refresh_token=refresh) as client:
        sub = await client.subscribe(topic)
        link = client._link
        await asyncio.sleep(5)  # past the first token's exp: the gateway would have closed 4401
        assert refreshed, "the token was not refreshed"
        assert client.connected and client._link is link and client.reconnects == 0
        await client.publish(topic, "still here")
        assert (await within(sub.__anext__())).data == "still here"


async def test_lapsed_token_closes_4401_then_a_new_token_and_a_reconnect(gateway):
    # The refresh fails until after exp, so the gateway closes with 4401; the client gets a new
    # token, reconnects and resubscribes.
    loop = asyncio.get_running_loop()
    started = loop.time()
    errors: list[firetower.FiretowerError] = []

    def refresh() -> str:
        if loop.time() - started < 4:
            raise RuntimeError("token service down")
        return token("judy", ttl=600)

    topic = unique("room")
    async with firetower.Client(ws_url(gateway), token=token("judy", ttl=3), refresh_token=refresh,
                                reconnect=firetower.Backoff(initial=0.2, max=1),
                                on_error=errors.append) as client, \
            firetower.Client(ws_url(gateway), token=token("pub")) as pub:
        sub = await client.subscribe(topic)
        await eventually(lambda: client.reconnects == 1 and client.connected, timeout=20,
                         what="a reconnect after the 4401")
        assert sub.recovered is False  # no history on this topic: nothing could be replayed
        await pub.publish(topic, "after 4401")
        assert (await within(sub.__anext__())).data == "after 4401"
        assert any(isinstance(e, firetower.Unauthorized) for e in errors)


async def test_reconnects_to_the_other_gateway_after_sigkill_and_resubscribes_in_one_frame(
        gateway_pair, forgotten, monkeypatch):
    a, b = gateway_pair
    sent: list[dict] = []
    real_encode = firetower._client.encode

    def recording_encode(frame):
        sent.append(dict(frame))
        return real_encode(frame)

    monkeypatch.setattr(firetower._client, "encode", recording_encode)
    topics = [unique("room") for _ in range(3)]
    resubscribed: list[bool] = []
    client = firetower.Client(urls=[a.url, b.url], token=token("kim"),
                              reconnect=firetower.Backoff(initial=0.2, max=1))
    async with client, firetower.Client(b.url, token=token("pub")) as pub:
        subs = [await client.subscribe(topics[0], on_resubscribe=resubscribed.append)]
        subs += [await client.subscribe(t) for t in topics[1:]]
        assert client.url == a.url
        before = len(sent)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        await eventually(lambda: client.connected and client.url == b.url, what="reconnected to b")
        assert client.reconnects == 1
        resubs = [f for f in sent[before:] if f["op"] == "subscribe"]
        assert len(resubs) == 1 and sorted(resubs[0]["topics"]) == sorted(topics), resubs
        assert "recover" not in resubs[0]  # no message carried an offset: nothing to recover
        assert [s.recovered for s in subs] == [False, False, False]
        await eventually(lambda: resubscribed == [False], what="on_resubscribe(False)")
        for i, t in enumerate(topics):
            await forgotten(t, a)
            await pub.publish(t, i)
        for i, s in enumerate(subs):
            assert (await within(s.__anext__())).data == i


async def test_gateway_shutdown_1001_reconnects_elsewhere(gateway_pair, forgotten):
    a, b = gateway_pair
    topic = unique("room")
    async with firetower.Client(urls=[a.url, b.url], token=token("leo"),
                                reconnect=firetower.Backoff(initial=0.2, max=1)) as client, \
            firetower.Client(b.url, token=token("pub")) as pub:
        sub = await client.subscribe(topic)
        a.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: client.connected and client.url == b.url, what="reconnected to b")
        await forgotten(topic, a)
        await pub.publish(topic, "moved")
        assert (await within(sub.__anext__())).data == "moved"


async def test_publish_waits_for_the_reconnect_within_its_deadline(gateway_pair, forgotten):
    a, b = gateway_pair
    topic = unique("room")
    async with firetower.Client(urls=[a.url, b.url], token=token("mia"),
                                reconnect=firetower.Backoff(initial=1, max=1, rng=Highest())) as client:
        other = unique("room")
        sub = await client.subscribe(other)
        a.proc.kill()
        a.proc.wait()
        await eventually(lambda: not client.connected, what="the loss noticed")
        # Sent once the client is back (about 1 s), well within the deadline. (To a topic the
        # dead gateway did not hold: publishes to those wait for the cluster to forget it.)
        await client.publish(topic, "queued", timeout=10)
        assert client.reconnects == 1 and client.url == b.url
        await forgotten(other, a)
        await client.publish(other, "after")
        assert (await within(sub.__anext__())).data == "after"


async def test_kick_closes_4403_and_the_client_stops_for_good(gateway, admin):
    errors: list[firetower.FiretowerError] = []
    topic = unique("room")
    client = firetower.Client(ws_url(gateway), token=token("kicked-user"), on_error=errors.append,
                              reconnect=firetower.Backoff(initial=0.1, max=0.2))
    await client.connect()
    sub = await client.subscribe(topic)
    await asyncio.to_thread(admin, "kick", "--user", "kicked-user")
    with pytest.raises(firetower.Forbidden) as e:
        await within(sub.__anext__())
    assert e.value.close_code == 4403
    await asyncio.sleep(1)  # well past the backoff: it must not have reconnected
    assert not client.connected and client.reconnects == 0
    assert any(isinstance(x, firetower.Forbidden) and x.close_code == 4403 for x in errors)
    with pytest.raises(firetower.ClientClosed):
        await client.publish(topic, 1)
    await client.close()


async def test_a_topic_ban_ends_that_subscription_and_the_connection_stays(gateway, admin):
    errors: list[firetower.FiretowerError] = []
    banned, kept = unique("banme"), unique("room")
    async with firetower.Client(ws_url(gateway), token=token("pat"), on_error=errors.append) as client:
        sub = await client.subscribe(banned)
        other = await client.subscribe(kept)
        await asyncio.to_thread(admin, "ban", "add", "--topic", banned, "--ttl", "5m")
        with pytest.raises(firetower.Forbidden):
            await within(sub.__anext__())
        assert isinstance(sub.error, firetower.Forbidden) and not sub.active
        assert any(isinstance(e, firetower.Forbidden) for e in errors)
        assert client.connected
        await client.publish(kept, "fine")
        assert (await within(other.__anext__())).data == "fine"
        # The topic is free again for a new subscription attempt, which the ban refuses.
        with pytest.raises(firetower.Forbidden):
            await client.subscribe(banned)


async def test_resubscribe_keeps_the_allowed_topics_when_one_was_banned_meanwhile(
        gateway_pair, forgotten, admin):
    a, b = gateway_pair
    banned, kept = unique("banme"), unique("room")
    errors: list[firetower.FiretowerError] = []
    client = firetower.Client(urls=[a.url, b.url], token=token("quinn"), on_error=errors.append,
                              reconnect=firetower.Backoff(initial=4, max=4, rng=Highest()))
    async with client, firetower.Client(b.url, token=token("pub")) as pub:
        lost = await client.subscribe(banned)
        other = await client.subscribe(kept)
        a.proc.kill()
        a.proc.wait()
        await eventually(lambda: not client.connected, what="the loss noticed")
        await asyncio.to_thread(admin, "ban", "add", "--topic", banned, "--ttl", "5m")
        await eventually(lambda: client.connected, timeout=20, what="reconnected")
        with pytest.raises(firetower.Forbidden):
            await within(lost.__anext__())
        assert other.active and other.recovered is False
        await forgotten(kept, a)
        await pub.publish(kept, "still")
        assert (await within(other.__anext__())).data == "still"
        assert any(isinstance(e, firetower.Forbidden) for e in errors)


async def test_too_many_connections_is_4429(cluster, auth_config):
    from conftest import _gateway_ids
    addr, _, _ = cluster.gateway(next(_gateway_ids),
                                 auth_config + "[limits]\nmax_connections_per_user = 1\n")
    async with firetower.Client(ws_url(addr), token=token("nora")):
        second = firetower.Client(ws_url(addr), token=token("nora"))
        with pytest.raises(firetower.TooManyConnections) as e:
            await within(second.connect())
        assert e.value.close_code == 4429
        await second.close()


async def test_iteration_queue_is_bounded_and_drops_the_oldest(gateway):
    topic = unique("room")
    gaps: list[firetower.Gap] = []
    async with firetower.Client(ws_url(gateway), token=token("olga")) as client:
        sub = await client.subscribe(topic, max_queue=5, on_gap=gaps.append)
        for i in range(20):
            await client.publish(topic, i)
        await eventually(lambda: sub.dropped == 15, what="15 dropped")
        got = [(await within(sub.__anext__())).data for _ in range(5)]
        assert got == list(range(15, 20))
        await eventually(lambda: sum(g.dropped for g in gaps) == 15, what="the drops reported")
        assert all(g.local and g.topic == topic for g in gaps)
