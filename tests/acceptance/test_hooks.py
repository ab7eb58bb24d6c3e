"""Acceptance of lifecycle hooks (issue 12, point 2), with python `websockets` and a plain
HTTP server from the standard library as the application."""

import asyncio
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the gateway reuses its connections
    seen = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        App.seen.append(body)
        event = body["event"]
        if event == "connect":
            answer = {"allow": True, "user": "u1", "subscribe": ["room.*"], "publish": ["room.*"]}
        elif event == "subscribe":
            answer = ({"allow": False, "code": "forbidden", "message": "members only"}
                      if "room.secret" in body["topics"] else {"allow": True})
        elif event == "publish":
            answer = {"allow": True, "data": {"text": body["data"]["text"].upper()}}
        else:
            answer = {"allow": True}
        out = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def app_url():
    ThreadingHTTPServer.request_queue_size = 1024
    server = ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def hooks_config(url, on_failure="deny", events=("connect", "subscribe", "publish", "disconnect")):
    return (f'[hooks]\nurl = "{url}"\nevents = {json.dumps(list(events))}\n'
            f'timeout_ms = 1000\non_failure = "{on_failure}"\n')


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def request(ws, frame):
    await ws.send(json.dumps(frame))
    while True:
        reply = json.loads(await ws.recv())
        if reply.get("id") == frame["id"]:
            return reply


async def close_code(ws):
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None


def test_hooks_authenticate_deny_and_rewrite(cluster, app_url):
    addr, _, _ = cluster.gateway(31, hooks_config(app_url))

    async def go():
        async with connect(f"ws://{addr}/ws", subprotocols=["firetower.json"]) as ws:
            assert await request(ws, {"op": "subscribe", "topics": ["room.1"], "id": 1}) == {"op": "ack", "id": 1}
            denied = await request(ws, {"op": "subscribe", "topics": ["room.secret"], "id": 2})
            assert denied["code"] == "forbidden" and denied["message"] == "members only"
            assert (await request(ws, {"op": "subscribe", "topics": ["chat.1"], "id": 3}))["code"] == "forbidden"
            await ws.send(json.dumps({"op": "publish", "topic": "room.1", "data": {"text": "hello"}, "id": 4}))
            got = {}
            while "message" not in got or "ack" not in got:
                f = json.loads(await ws.recv())
                got[f["op"]] = f
            assert got["message"]["data"] == {"text": "HELLO"}
    run(go())
    connects = [b for b in App.seen if b["event"] == "connect" and b["gateway"] == 31]
    assert connects and "upgrade" in connects[0]["headers"]


def dead_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_hook_down_denies_or_allows_by_policy(cluster):
    deny, _, _ = cluster.gateway(32, hooks_config(dead_url(), "deny", ("connect",)))
    allow, _, _ = cluster.gateway(33, "allow_anonymous = true\n" + hooks_config(dead_url(), "allow", ("connect", "subscribe")))

    async def go():
        async with connect(f"ws://{deny}/ws", subprotocols=["firetower.json"]) as ws:
            assert await close_code(ws) == 4503
        async with connect(f"ws://{allow}/ws", subprotocols=["firetower.json"]) as ws:
            assert await request(ws, {"op": "subscribe", "topics": ["room.1"], "id": 1}) == {"op": "ack", "id": 1}
    run(go())


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_thousand_connects_a_second_through_the_hook(cluster, app_url):
    addr, proc, _ = cluster.gateway(34, hooks_config(app_url, events=("connect",)))
    before = open_fds(proc.pid)

    async def go():
        conns = []
        started = time.time()
        for batch in range(10):
            conns += await asyncio.gather(*[connect(f"ws://{addr}/ws", subprotocols=["firetower.json"])
                                            for _ in range(100)])
            await asyncio.sleep(max(0.0, started + (batch + 1) * 0.1 - time.time()))
        elapsed = time.time() - started
        # Every connection is in and served.
        replies = await asyncio.gather(*[request(ws, {"op": "ping", "id": i}) for i, ws in enumerate(conns)])
        assert all(r["op"] == "pong" for r in replies)
        during = open_fds(proc.pid)
        await asyncio.gather(*[ws.close() for ws in conns])
        return elapsed, during

    elapsed, during = run(go())
    # 1,000 client sockets plus what the hook pool holds: far from the descriptor limit.
    assert during - before < 1000 + 600, (before, during)
    print(f"1000 connects through the hook in {elapsed:.2f} s; fds {before} -> {during}")
