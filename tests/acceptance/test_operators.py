"""Acceptance of operator controls (issue 12, point 4): `cluster kick`, `cluster ban`,
`cluster stats`, with python `websockets` clients on two gateways. (A restart of every
manager keeping bans is covered by tests/cluster_operators.rs.)"""

import asyncio
import json
import time

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SECRET = "operators-secret-0123456789abcdef-32"


def token(sub):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600,
                       "firetower": {"subscribe": ["room.*", "spam.*"], "publish": ["room.*", "spam.*"]}},
                      SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def gateways(cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("ops")
    (d / "secret").write_text(SECRET)
    conf = f'[auth]\nhs256_secret_file = "{d / "secret"}"\n'
    return [cluster.gateway(41, conf)[0], cluster.gateway(42, conf)[0]]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


async def request(ws, frame):
    await ws.send(json.dumps(frame))
    while True:
        reply = json.loads(await ws.recv())
        if reply.get("id") == frame["id"]:
            return reply


async def close_code(ws, within):
    try:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    except ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None


def ws(addr, user):
    # max_queue=None: a publisher that does not read its acks must still see the close frame
    # (with a bounded queue the client stops reading and waits out its close timeout).
    return connect(f"ws://{addr}/ws?token={token(user)}", subprotocols=["firetower.json"], max_queue=None)


def admin(cluster):
    return cluster.admins[0]


def test_kick_closes_the_user_on_every_gateway_within_a_second(cluster, gateways):
    async def go():
        async with ws(gateways[0], "k1") as a, ws(gateways[1], "k1") as b, ws(gateways[0], "k2") as other:
            for c in (a, b, other):
                assert (await request(c, {"op": "ping", "id": 1}))["op"] == "pong"
            started = time.time()
            await asyncio.to_thread(cluster.cli, "kick", "--user", "k1", "--admin", admin(cluster))
            codes = await asyncio.gather(close_code(a, 1.5), close_code(b, 1.5))
            assert codes == [4403, 4403], codes
            assert time.time() - started < 2.0
            assert (await request(other, {"op": "ping", "id": 2}))["op"] == "pong"
        # A kick is not a ban.
        async with ws(gateways[1], "k1") as again:
            assert (await request(again, {"op": "ping", "id": 3}))["op"] == "pong"
    run(go())


def ban_ids(cluster):
    out = cluster.cli("ban", "list", "--json", "--admin", admin(cluster)).stdout
    return json.loads(out)


def test_user_ip_and_topic_bans(cluster, gateways):
    async def go():
        async with ws(gateways[0], "b2") as open_conn, ws(gateways[1], "b3") as topic_conn:
            assert (await request(topic_conn, {"op": "subscribe", "topics": ["spam.1"], "id": 1}))["op"] == "ack"
            await asyncio.to_thread(cluster.cli, "ban", "add", "--user", "b2", "--ttl", "4s",
                                    "--reason", "abuse", "--admin", admin(cluster))
            assert await close_code(open_conn, 1.5) == 4403
            async with ws(gateways[1], "b2") as refused:
                assert await close_code(refused, 3) == 4403
            # Topic ban: the held subscription is dropped, new ones refused.
            await asyncio.to_thread(cluster.cli, "ban", "add", "--topic", "spam.*", "--admin", admin(cluster))
            dropped = json.loads(await asyncio.wait_for(topic_conn.recv(), 1.5))
            assert dropped["code"] == "forbidden", dropped
            r = await request(topic_conn, {"op": "subscribe", "topics": ["spam.2"], "id": 2})
            assert r["code"] == "forbidden"
            r = await request(topic_conn, {"op": "publish", "topic": "spam.2", "data": 1, "id": 3})
            assert r["code"] == "forbidden"
        # The user ban lapses after its TTL.
        await asyncio.sleep(4.5)
        async with ws(gateways[0], "b2") as back:
            assert (await request(back, {"op": "ping", "id": 4}))["op"] == "pong"
        # An address ban closes every client from it.
        async with ws(gateways[0], "b5") as c:
            await asyncio.to_thread(cluster.cli, "ban", "add", "--ip", "127.0.0.1", "--admin", admin(cluster))
            try:
                assert await close_code(c, 1.5) == 4403
            finally:
                listed = await asyncio.to_thread(ban_ids, cluster)
                for b in listed["bans"]:
                    await asyncio.to_thread(cluster.cli, "ban", "remove", str(b["id"]), "--admin", admin(cluster))
        # Lifted: clients come back within a second.
        deadline = time.time() + 2
        while True:
            try:
                async with ws(gateways[0], "b6") as c:
                    assert (await request(c, {"op": "ping", "id": 5}))["op"] == "pong"
                    break
            except (ConnectionClosed, AssertionError):
                assert time.time() < deadline, "the lifted ban is still enforced"
                await asyncio.sleep(0.1)
    run(go())


def test_stats_match_what_was_driven(cluster, gateways):
    rate, seconds = 200, 5

    async def go():
        conns = [await ws(gateways[0], f"s{i}").__aenter__() for i in range(5)]
        sub = await ws(gateways[1], "s-sub").__aenter__()
        assert (await request(sub, {"op": "subscribe", "topics": ["room.stats"], "id": 1}))["op"] == "ack"
        started = time.time()
        sent = 0
        while time.time() - started < seconds:
            await asyncio.gather(*[c.send(json.dumps({"op": "publish", "topic": "room.stats", "data": 1, "id": sent + i}))
                                   for i, c in enumerate(conns)])
            sent += len(conns)
            await asyncio.sleep(max(0.0, started + sent / rate - time.time()))
        out = await asyncio.to_thread(cluster.cli, "stats", "--json", "--admin", admin(cluster))
        for c in conns + [sub]:
            await c.close()
        return json.loads(out.stdout)

    stats = run(go())
    by_id = {g["id"]: g for g in stats["gateways"]}
    g41, g42 = by_id[41], by_id[42]
    assert g41["connections"] >= 5 and g42["connections"] >= 1, stats
    assert abs(g41["messages_in_per_s"] - rate) <= 0.1 * rate, g41
    assert abs(g42["messages_out_per_s"] - rate) <= 0.1 * rate, g42
    assert {"groups", "totals"} <= set(stats), stats
