"""Acceptance of client authentication, permissions and the backend API (issue 12, points 1,
5 and 6), with the standard clients: python `websockets`, `PyJWT`, `curl`."""

import asyncio
import base64
import json
import subprocess
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SECRET = "acceptance-secret-0123456789abcdef-32b"
API_KEY = "acceptance-api-key-0123456789"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def hs(claims):
    return jwt.encode(claims, SECRET, algorithm="HS256")


def claims(sub, ttl=60, sub_patterns=("room.*",), pub_patterns=("room.*",), **extra):
    c = {"sub": sub, "exp": int(time.time()) + ttl, "aud": "app",
         "firetower": {"subscribe": list(sub_patterns), "publish": list(pub_patterns)}}
    c.update(extra)
    return c


@pytest.fixture(scope="module")
def hs_gateway(cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("hs")
    (d / "secret").write_text(SECRET)
    (d / "keys").write_text(f"# backend\n{API_KEY}\n")
    addr, _, _ = cluster.gateway(11, f'[auth]\nhs256_secret_file = "{d / "secret"}"\naudience = "app"\n'
                                      f'[api]\nkeys_file = "{d / "keys"}"\n')
    return addr


@pytest.fixture(scope="module")
def rsa_keys():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, private, public


async def close_code(ws):
    """Read until the server closes; its close code."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None


async def request(ws, frame):
    await ws.send(json.dumps(frame))
    while True:
        reply = json.loads(await ws.recv())
        if reply.get("id") == frame["id"]:
            return reply


def url(addr, token=None):
    return f"ws://{addr}/ws" + (f"?token={token}" if token else "")


def test_hs256_refuses_missing_bad_expired_and_wrong_audience_tokens(hs_gateway):
    async def go():
        async with connect(url(hs_gateway), subprotocols=["firetower.json"]) as ws:
            await ws.send(json.dumps({"op": "subscribe", "topics": ["room.1"], "id": 1}))
            assert await close_code(ws) == 4401
        bad_sig = jwt.encode(claims("u1"), "another-secret-0123456789abcdef-xyz", algorithm="HS256")
        for token in [bad_sig, hs(claims("u1", ttl=-10)), hs(claims("u1", aud="other"))]:
            async with connect(url(hs_gateway, token), subprotocols=["firetower.json"]) as ws:
                assert await close_code(ws) == 4401
    run(go())


def test_patterns_allow_room_and_forbid_chat(hs_gateway):
    async def go():
        async with connect(url(hs_gateway, hs(claims("u1"))), subprotocols=["firetower.json"]) as ws:
            assert await request(ws, {"op": "subscribe", "topics": ["room.1"], "id": 1}) == {"op": "ack", "id": 1}
            r = await request(ws, {"op": "subscribe", "topics": ["chat.1"], "id": 2})
            assert r["op"] == "error" and r["code"] == "forbidden", r
            assert await request(ws, {"op": "ping", "id": 3}) == {"op": "pong", "id": 3}
    run(go())


def test_expiry_closes_and_refresh_keeps_open(hs_gateway):
    async def go():
        short = hs(claims("u1", ttl=3))
        async with connect(url(hs_gateway, short), subprotocols=["firetower.json"]) as lapsing, \
                connect(url(hs_gateway, short), subprotocols=["firetower.json"]) as refreshed:
            fresh = hs(claims("u1", ttl=120))
            assert await request(refreshed, {"op": "auth", "token": fresh, "id": 1}) == \
                {"op": "ack", "id": 1, "user": "u1"}
            started = time.time()
            assert await close_code(lapsing) == 4401
            assert time.time() - started > 1.0
            assert await request(refreshed, {"op": "ping", "id": 2}) == {"op": "pong", "id": 2}
    run(go())


def test_header_and_first_frame_tokens(hs_gateway):
    async def go():
        token = hs(claims("u5"))
        async with connect(url(hs_gateway), subprotocols=["firetower.json"],
                           additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert await request(ws, {"op": "subscribe", "topics": ["room.5"], "id": 1}) == {"op": "ack", "id": 1}
        async with connect(url(hs_gateway), subprotocols=["firetower.json"]) as ws:
            assert (await request(ws, {"op": "auth", "token": token, "id": 1}))["user"] == "u5"
    run(go())


def test_rs256_public_key_and_jwks(cluster, rsa_keys, tmp_path):
    key, private, public = rsa_keys
    (tmp_path / "public.pem").write_bytes(public)
    numbers = key.public_key().public_numbers()

    def b64(n):
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [
        {"kty": "RSA", "kid": "k1", "alg": "RS256", "n": b64(numbers.n), "e": b64(numbers.e)}]}))
    pem_gw, _, _ = cluster.gateway(12, f'[auth]\npublic_key_file = "{tmp_path / "public.pem"}"\n')
    jwks_gw, _, _ = cluster.gateway(13, f'[auth]\njwks_file = "{tmp_path / "jwks.json"}"\n')

    async def go():
        c = claims("u1")
        del c["aud"]
        token = jwt.encode(c, private, algorithm="RS256")
        async with connect(url(pem_gw, token), subprotocols=["firetower.json"]) as ws:
            assert await request(ws, {"op": "subscribe", "topics": ["room.1"], "id": 1}) == {"op": "ack", "id": 1}
            assert (await request(ws, {"op": "subscribe", "topics": ["chat.1"], "id": 2}))["code"] == "forbidden"
        with_kid = jwt.encode(c, private, algorithm="RS256", headers={"kid": "k1"})
        async with connect(url(jwks_gw, with_kid), subprotocols=["firetower.json"]) as ws:
            assert await request(ws, {"op": "subscribe", "topics": ["room.1"], "id": 1}) == {"op": "ack", "id": 1}
        # A token whose kid the JWKS does not hold, an expired one, an HS256 one: 4401.
        for bad in [jwt.encode(c, private, algorithm="RS256", headers={"kid": "k9"}),
                    jwt.encode({**c, "exp": int(time.time()) - 5}, private, algorithm="RS256", headers={"kid": "k1"}),
                    hs(c)]:
            async with connect(url(jwks_gw, bad), subprotocols=["firetower.json"]) as ws:
                assert await close_code(ws) == 4401
    run(go())


def curl(addr, path, body, key=API_KEY):
    out = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-H", f"Authorization: apikey {key}",
                          "-H", "Content-Type: application/json", "-d", body, f"http://{addr}{path}"],
                         capture_output=True, text=True, check=True).stdout
    text, status = out.rsplit("\n", 1)
    return int(status), json.loads(text) if text else None


def test_backend_api_publish_reaches_a_subscriber(hs_gateway):
    async def go():
        async with connect(url(hs_gateway, hs(claims("u1"))), subprotocols=["firetower.json"]) as ws:
            assert await request(ws, {"op": "subscribe", "topics": ["room.api"], "id": 1}) == {"op": "ack", "id": 1}
            status, body = await asyncio.to_thread(curl, hs_gateway, "/api/publish",
                                                   '{"topic":"room.api","data":{"a":1}}')
            assert status == 200, body
            msg = json.loads(await ws.recv())
            assert msg["op"] == "message" and msg["data"] == {"a": 1}
            assert (msg["term"], msg["seq"]) == (body["term"], body["seq"])
            status, body = await asyncio.to_thread(curl, hs_gateway, "/api/publish",
                                                   '{"topic":"room.api","data":1}', "wrong-key-0123456789")
            assert status == 401 and body["code"] == "unauthorized"
    run(go())


def test_bad_configurations_are_clear_errors(cluster, tmp_path):
    cases = {
        "malformed": ("[limits\nmax_topics = 3\n", "gateway config"),
        "unknown key": ("[limits]\nmax_topic = 3\n", "max_topic"),
        "unreadable key file": (f'[auth]\nhs256_secret_file = "{tmp_path / "missing"}"\n', "hs256_secret_file"),
        "bad jwks": ('[auth]\njwks_file = "/dev/null"\n', "jwks_file"),
        "no auth": ("", "--allow-anonymous"),
    }
    for i, (name, (text, needle)) in enumerate(cases.items()):
        addr, proc, log = cluster.gateway(20 + i, text, wait=False)
        assert proc.wait(timeout=30) != 0, name
        out = log.read_text()
        assert needle in out, f"{name}: {out}"
        assert "panicked" not in out, f"{name}: {out}"
