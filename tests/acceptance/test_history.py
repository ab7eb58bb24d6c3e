"""Acceptance of history and recovery (issue 15, points 1 and 2) with python `websockets`
clients: a subscriber whose gateway is killed with SIGKILL recovers every missed message from
another gateway, exactly once and in offset order, then live ones; once the window has passed,
recovery says `recovered: false` and only new messages follow."""

import asyncio
import json
import signal

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

CONF = "allow_anonymous = true\n"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


@pytest.fixture(scope="module")
def rules(cluster):
    admin = cluster.admins[0]
    cluster.cli("history", "set", "chat.*", "--size", "5000", "--ttl", "10m", "--admin", admin)
    cluster.cli("history", "set", "tiny.*", "--size", "10", "--ttl", "10m", "--admin", admin)
    listed = json.loads(cluster.cli("history", "list", "--json", "--admin", admin).stdout)
    patterns = {r["pattern"]: r for r in listed["history"]}
    assert patterns["chat.*"]["size"] == 5000 and patterns["tiny.*"]["ttl_ms"] == 600_000
    return admin


class Conn:
    """One JSON connection: requests by id, messages kept in arrival order."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.waiting = {}
        self.messages = asyncio.Queue()
        self.other = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        try:
            await self._read_all()
        except ConnectionClosed:
            pass  # the gateway was killed, or the test closed it

    async def _read_all(self):
        async for text in self.ws:
            frame = json.loads(text)
            if frame.get("op") == "message":
                await self.messages.put(frame)
            elif "id" in frame and frame["id"] in self.waiting:
                self.waiting.pop(frame["id"]).set_result(frame)
            else:
                self.other.append(frame)

    async def request(self, frame):
        self.next_id += 1
        frame["id"] = self.next_id
        fut = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = fut
        await self.ws.send(json.dumps(frame))
        return await asyncio.wait_for(fut, 30)

    async def next_message(self, within=15):
        return await asyncio.wait_for(self.messages.get(), within)


async def open_conn(addr):
    ws = await connect(f"ws://{addr}/ws", max_queue=None)
    return Conn(ws)


async def publish_all(conn, topic, n, workers=8):
    """Publish n messages (data {"n": i}); retry those refused before being stored
    (`unavailable`: a dead gateway still subscribed until its lease ends). Returns the
    acked numbers and those whose outcome is unknown (`timeout`)."""
    acked, unknown = set(), set()
    todo = asyncio.Queue()
    for i in range(n):
        todo.put_nowait(i)

    async def worker():
        while not todo.empty():
            i = todo.get_nowait()
            while True:
                reply = await conn.request({"op": "publish", "topic": topic, "data": {"n": i}})
                if reply["op"] == "ack":
                    assert "offset" in reply and "epoch" in reply, reply
                    acked.add(i)
                    break
                if reply.get("code") == "timeout":
                    unknown.add(i)
                    break
                assert reply.get("code") == "unavailable", reply
                await asyncio.sleep(0.05)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return acked, unknown


def test_recovery_after_the_gateway_was_killed(cluster, rules):
    a_addr, a_proc, _ = cluster.gateway(51, CONF)
    b_addr, _, _ = cluster.gateway(52, CONF)

    async def go():
        sub = await open_conn(a_addr)
        assert (await sub.request({"op": "subscribe", "topics": ["chat.r1"]}))["op"] == "ack"
        pub = await open_conn(b_addr)
        first = await pub.request({"op": "publish", "topic": "chat.r1", "data": {"n": -1}})
        assert first["op"] == "ack" and first["offset"] >= 1, first
        got = await sub.next_message()
        assert got["data"] == {"n": -1} and got["offset"] == first["offset"]
        position = {"epoch": got["epoch"], "offset": got["offset"]}

        a_proc.send_signal(signal.SIGKILL)
        a_proc.wait()
        acked, unknown = await publish_all(pub, "chat.r1", 2000)
        assert len(acked) + len(unknown) == 2000

        back = await open_conn(b_addr)
        ack = await back.request({"op": "subscribe", "topics": ["chat.r1"],
                                  "recover": {"chat.r1": position}})
        assert ack == {"op": "ack", "id": ack["id"], "recovered": {"chat.r1": True}}, ack
        # Every missed message, once, in offset order, with no hole.
        seen = []
        last = position["offset"]
        while True:
            try:
                m = await back.next_message(within=15 if not acked <= set(seen) else 2)
            except asyncio.TimeoutError:
                break
            assert m["offset"] == last + 1, (last, m)
            assert m["epoch"] == position["epoch"]
            last = m["offset"]
            seen.append(m["data"]["n"])
        assert len(seen) == len(set(seen)), "a message came twice"
        assert acked <= set(seen), "an acknowledged message was not recovered"
        assert set(seen) <= acked | unknown, "recovered a message never published"
        # Then live ones.
        live = await pub.request({"op": "publish", "topic": "chat.r1", "data": {"n": "live"}})
        m = await back.next_message()
        assert m["data"] == {"n": "live"} and m["offset"] == live["offset"] == last + 1
        # Nothing else arrived (no duplicate after the live one).
        await asyncio.sleep(0.3)
        assert back.messages.empty()
        # The history op reads the newest kept messages.
        h = await back.request({"op": "history", "topic": "chat.r1", "limit": 5})
        assert h["op"] == "history" and h["offset"] == live["offset"], h
        assert [x["offset"] for x in h["messages"]] == list(range(last - 3, last + 2))
        for c in (sub, pub, back):
            await c.ws.close()

    run(go())


def test_recovery_past_the_window_says_false(cluster, rules):
    addr = cluster.dev_gateway

    async def go():
        sub = await open_conn(addr)
        assert (await sub.request({"op": "subscribe", "topics": ["tiny.1"]}))["op"] == "ack"
        pub = await open_conn(addr)
        await pub.request({"op": "publish", "topic": "tiny.1", "data": 0})
        m = await sub.next_message()
        position = {"epoch": m["epoch"], "offset": m["offset"]}
        await sub.ws.close()
        for i in range(1, 31):
            r = await pub.request({"op": "publish", "topic": "tiny.1", "data": i})
            assert r["op"] == "ack", r
        back = await open_conn(addr)
        ack = await back.request({"op": "subscribe", "topics": ["tiny.1"],
                                  "recover": {"tiny.1": position}})
        assert ack["recovered"] == {"tiny.1": False}, ack
        r = await pub.request({"op": "publish", "topic": "tiny.1", "data": "new"})
        m = await back.next_message()
        assert m["data"] == "new" and m["offset"] == r["offset"], m
        await asyncio.sleep(0.3)
        assert back.messages.empty(), "messages from before the subscribe arrived"
        # A recover naming an unknown epoch is refused the same way.
        other = await open_conn(addr)
        ack = await other.request({"op": "subscribe", "topics": ["tiny.1"],
                                   "recover": {"tiny.1": {"epoch": "nope", "offset": 1}}})
        assert ack["recovered"] == {"tiny.1": False}
        # A topic without history: recovered false, and the history op says so.
        ack = await other.request({"op": "subscribe", "topics": ["plain.1"],
                                   "recover": {"plain.1": {"epoch": "x", "offset": 3}}})
        assert ack["recovered"] == {"plain.1": False}
        h = await other.request({"op": "history", "topic": "plain.1"})
        assert h["op"] == "error" and h["code"] == "no_history", h
        for c in (pub, back, other):
            await c.ws.close()

    run(go())
