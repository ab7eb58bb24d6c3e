"""Client TLS with standard clients: python `websockets` over `wss://` with an `ssl.SSLContext`
trusting a test CA, `https://` health checks, and a certificate reload on SIGHUP.

Run (from the repository root):

    cargo build --bin firetower            # or set FIRETOWER_BIN to a built binary
    pip install websockets pytest
    python3 -m pytest -v tests/acceptance/test_client_tls.py

It starts `firetower dev --client-tls-dir DIR` (3 managers and a gateway on loopback, in a
temporary directory, on free ports) once for the module and stops it at the end.
"""

import asyncio
import json
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUBPROTOCOL = "firetower.json"


def firetower_bin():
    given = os.environ.get("FIRETOWER_BIN")
    if given:
        return given
    for profile in ("debug", "release"):
        path = ROOT / "target" / profile / "firetower"
        if path.exists():
            return str(path)
    pytest.skip("no firetower binary: cargo build --bin firetower, or set FIRETOWER_BIN")


def free_port_block(count):
    """A first port such that `count` consecutive ports are free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        try:
            held = []
            for p in range(base, base + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    t = socket.socket(socket.AF_INET, kind)
                    held.append(t)
                    t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in held:
                t.close()
    raise RuntimeError("no block of free ports")


def context_for(ca_file):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def https_get(url, ctx):
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return r.status, r.read().decode()


class Dev:
    def __init__(self):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="firetower-client-tls-"))
        self.tls_dir = self.dir / "client-tls"
        base = free_port_block(9)
        self.port = free_port_block(1)
        self.log = open(self.dir / "dev.log", "wb")
        self.proc = subprocess.Popen(
            [firetower_bin(), "dev", "--data-dir", str(self.dir / "data"),
             "--base-port", str(base), "--listen", f"127.0.0.1:{self.port}",
             "--client-tls-dir", str(self.tls_dir)],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.ca = self.tls_dir / "ca.pem"
        deadline = time.time() + 90
        while True:
            assert self.proc.poll() is None, f"firetower dev exited; see {self.dir}/dev.log"
            try:
                if self.ca.exists() and https_get(self.https("/readyz"), self.ctx())[0] == 200:
                    return
            except (OSError, ssl.SSLError):
                pass
            assert time.time() < deadline, f"gateway not ready; see {self.dir}/dev.log"
            time.sleep(0.3)

    def ctx(self):
        return context_for(self.ca)

    def https(self, path):
        return f"https://127.0.0.1:{self.port}{path}"

    def wss(self, host="127.0.0.1"):
        return f"wss://{host}:{self.port}/ws"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def dev():
    d = Dev()
    yield d
    d.stop()


async def request(ws, frame):
    await ws.send(json.dumps(frame))
    while True:
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if answer.get("id") == frame["id"] and answer["op"] in ("ack", "error", "pong"):
            return answer


async def next_message(ws):
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if m["op"] == "message":
            return m


def test_wss_subscribe_and_publish(dev):
    async def run():
        async with connect(dev.wss(), ssl=dev.ctx(), subprotocols=[SUBPROTOCOL]) as sub, \
                connect(dev.wss("localhost"), ssl=dev.ctx(), subprotocols=[SUBPROTOCOL]) as pub:
            assert sub.subprotocol == SUBPROTOCOL
            ack = await request(sub, {"op": "subscribe", "topics": ["room.tls"], "id": 1})
            assert ack == {"op": "ack", "id": 1}
            ack = await request(pub, {"op": "publish", "topic": "room.tls",
                                      "data": {"text": "over TLS"}, "id": 7})
            assert ack["op"] == "ack" and ack["id"] == 7 and ack["term"] >= 1, ack
            m = await next_message(sub)
            assert m["topic"] == "room.tls"
            assert m["data"] == {"text": "over TLS"}
            assert m["term"] >= 1 and m["seq"] >= 1
    asyncio.run(run())


def test_https_health_and_metrics(dev):
    assert https_get(dev.https("/healthz"), dev.ctx()) == (200, "ok\n")
    status, body = https_get(dev.https("/metrics"), dev.ctx())
    assert status == 200
    assert "firetower_gateway_tls_handshake_failures_total" in body


def test_a_client_without_the_ca_is_refused(dev):
    async def run():
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(dev.wss(), ssl=ssl.create_default_context(),
                               subprotocols=[SUBPROTOCOL]):
                pass
    asyncio.run(run())


def test_plaintext_to_the_tls_port_is_refused_and_the_gateway_keeps_serving(dev):
    async def run():
        with pytest.raises(Exception):
            async with connect(f"ws://127.0.0.1:{dev.port}/ws", subprotocols=[SUBPROTOCOL],
                               open_timeout=5):
                pass
    asyncio.run(run())
    with socket.create_connection(("127.0.0.1", dev.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert not data.startswith(b"HTTP"), data
    assert https_get(dev.https("/healthz"), dev.ctx())[0] == 200


def test_sighup_reloads_the_certificate_and_keeps_open_connections(dev):
    # A new CA and certificate, installed over the files the gateway was started with.
    fresh = dev.dir / "fresh"
    subprocess.run([firetower_bin(), "certs", "client-tls", "--dir", str(fresh)],
                   check=True, capture_output=True)
    old_ctx, new_ctx = dev.ctx(), context_for(fresh / "ca.pem")

    async def run():
        async with connect(dev.wss(), ssl=old_ctx, subprotocols=[SUBPROTOCOL]) as before:
            assert (await request(before, {"op": "subscribe", "topics": ["reload"], "id": 1}))["op"] == "ack"
            shutil.copy(fresh / "server.pem", dev.tls_dir / "server.pem")
            shutil.copy(fresh / "server-key.pem", dev.tls_dir / "server-key.pem")
            dev.proc.send_signal(signal.SIGHUP)
            # New handshakes present the new certificate once the reload is done.
            deadline = time.time() + 10
            while True:
                try:
                    async with connect(dev.wss(), ssl=new_ctx, subprotocols=[SUBPROTOCOL]) as after:
                        ack = await request(after, {"op": "publish", "topic": "reload",
                                                    "data": 1, "id": 2})
                        assert ack["op"] == "ack"
                    break
                except ssl.SSLCertVerificationError:
                    assert time.time() < deadline, "SIGHUP did not reload the certificate"
                    await asyncio.sleep(0.2)
            # The connection opened before the reload is still served.
            m = await next_message(before)
            assert m["topic"] == "reload" and m["data"] == 1
            assert (await request(before, {"op": "ping", "id": 3})) == {"op": "pong", "id": 3}
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(dev.wss(), ssl=old_ctx, subprotocols=[SUBPROTOCOL]):
                pass
    asyncio.run(run())
    assert dev.proc.poll() is None, "SIGHUP must not stop the process"
