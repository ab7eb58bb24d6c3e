"""Acceptance of presence (issue 15, point 4) with python `websockets` clients: users joining
from two gateways are listed once each with their connection counts; after `kill -9` of one
gateway, each user that had no other connection leaves exactly once, within the lease."""

import asyncio
import json
import signal
import time

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SECRET = "presence-secret-0123456789abcdef-32"
LEASE_S = 2  # the killed gateway's session lease (lease_ms below)
# A killed gateway's stream is seen dead after the link's QUIC idle timeout (3 s); its lease
# runs from its last heartbeat. Slack for a loaded CI machine and a debug build on top.
DETECT_S = 3
SLACK_S = 10


def token(sub):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600,
                       "firetower": {"subscribe": ["lobby.*"], "publish": ["lobby.*"]}},
                      SECRET, algorithm="HS256")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


class Conn:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.waiting = {}
        self.events = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        try:
            async for text in self.ws:
                frame = json.loads(text)
                if frame.get("op") in ("join", "leave"):
                    self.events.append((time.monotonic(), frame["op"], frame["user"]))
                elif frame.get("id") in self.waiting:
                    self.waiting.pop(frame["id"]).set_result(frame)
        except ConnectionClosed:
            pass

    async def request(self, frame):
        self.next_id += 1
        frame["id"] = self.next_id
        fut = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = fut
        await self.ws.send(json.dumps(frame))
        return await asyncio.wait_for(fut, 30)


async def join(addr, user, topic, join_leave=False):
    ws = await connect(f"ws://{addr}/ws?token={token(user)}", max_queue=None)
    c = Conn(ws)
    frame = {"op": "subscribe", "topics": [topic]}
    if join_leave:
        frame["join_leave"] = True
    ack = await c.request(frame)
    assert ack["op"] == "ack", ack
    return c


async def users_of(conn, topic, want, within=10):
    deadline = time.monotonic() + within
    while True:
        r = await conn.request({"op": "presence", "topic": topic})
        assert r["op"] == "presence", r
        got = {u["user"]: u["connections"] for u in r["users"]}
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def gateways(cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("presence")
    (d / "secret").write_text(SECRET)
    conf = f'lease_ms = {LEASE_S * 1000}\n[auth]\nhs256_secret_file = "{d / "secret"}"\n'
    cluster.cli("presence", "enable", "lobby.*", "--admin", cluster.admins[0])
    listed = json.loads(cluster.cli("presence", "list", "--json", "--admin", cluster.admins[0]).stdout)
    assert "lobby.*" in listed["presence"]
    return [cluster.gateway(61, conf), cluster.gateway(62, conf)]


def test_users_over_two_gateways_and_a_crash(gateways):
    (a, a_proc, _), (b, _, _) = gateways
    topic = "lobby.1"

    async def go():
        watcher = await join(b, "watcher", topic, join_leave=True)
        u1_a = await join(a, "u1", topic)
        u1_b = await join(b, "u1", topic)
        u2_a = await join(a, "u2", topic)
        u2_a2 = await join(a, "u2", topic)
        u3_a = await join(a, "u3", topic)
        want = {"watcher": 1, "u1": 2, "u2": 2, "u3": 1}
        assert await users_of(watcher, topic, want) == want
        # One join per user, however many connections it has.
        # (The watcher may hear its own join too: its count can commit after its subscribe.)
        joins = [u for (_, op, u) in watcher.events if op == "join" and u != "watcher"]
        assert sorted(joins) == ["u1", "u2", "u3"], watcher.events
        # A topic without a presence rule.
        r = await watcher.request({"op": "presence", "topic": "nopresence.1"})
        assert r["op"] == "error" and r["code"] in ("presence_disabled", "forbidden"), r

        killed = time.monotonic()
        a_proc.send_signal(signal.SIGKILL)
        a_proc.wait()
        want = {"watcher": 1, "u1": 1}
        got = await users_of(watcher, topic, want, within=LEASE_S + DETECT_S + SLACK_S + 5)
        assert got == want, got
        await asyncio.sleep(1)
        leaves = [(t, u) for (t, op, u) in watcher.events if op == "leave"]
        # u2 and u3 had connections only on the killed gateway: one leave each; u1 stays.
        assert sorted(u for _, u in leaves) == ["u2", "u3"], watcher.events
        for t, _ in leaves:
            print(f"leave {t - killed:.1f} s after the kill")
            assert t - killed < LEASE_S + DETECT_S + SLACK_S, f"leave after {t - killed:.1f} s"
        # u1's last connection leaves: one leave.
        await u1_b.ws.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ("leave", "u1") not in [(op, u) for (_, op, u) in watcher.events]:
            await asyncio.sleep(0.1)
        assert [u for (_, op, u) in watcher.events if op == "leave"].count("u1") == 1
        assert await users_of(watcher, topic, {"watcher": 1}) == {"watcher": 1}
        del u1_a, u2_a, u2_a2, u3_a
        await watcher.ws.close()

    run(go())
