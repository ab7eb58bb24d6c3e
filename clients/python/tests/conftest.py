"""Fixtures: a real Firetower cluster (`firetower dev` plus gateways with HS256 auth, from
tests/acceptance/cluster.py) and JWTs for it. FIRETOWER_BIN names the binary."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import jwt
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
# The package under test is this working tree's, installed or not.
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(ROOT / "tests" / "acceptance"))

from cluster import Cluster  # noqa: E402  (the acceptance suite's cluster launcher)

SECRET = "python-sdk-secret-0123456789abcdef"

_gateway_ids = itertools.count(70)


def token(sub: str, ttl: float = 600, subscribe: tuple[str, ...] = ("*",),
          publish: tuple[str, ...] = ("*",)) -> str:
    """An HS256 JWT for the test gateways."""
    return jwt.encode({"sub": sub, "exp": int(time.time() + ttl),
                       "firetower": {"subscribe": list(subscribe), "publish": list(publish)}},
                      SECRET, algorithm="HS256")


def ws_url(addr: str) -> str:
    return f"ws://{addr}/ws"


async def eventually(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Wait until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.05)


async def within(aw: Awaitable[Any], timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(aw, timeout)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("firetower"))
    yield c
    c.stop()


@pytest.fixture(scope="session")
def auth_config(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("auth")
    (d / "secret").write_text(SECRET)
    return f'[auth]\nhs256_secret_file = "{d / "secret"}"\n'


@pytest.fixture(scope="session")
def gateway(cluster, auth_config) -> str:
    """One gateway with HS256 auth, shared by the tests that do not disturb it."""
    addr, _, _ = cluster.gateway(next(_gateway_ids), auth_config)
    return addr


#: Lease of the gateways that tests kill: the managers forget a dead gateway's subscriptions
#: after it, and until then publishes to its topics wait for it.
PAIR_LEASE_MS = 2000


@dataclass
class Gateway:
    addr: str
    proc: Any
    id: int

    @property
    def url(self) -> str:
        return ws_url(self.addr)


@pytest.fixture
def gateway_pair(cluster, auth_config):
    """Two fresh gateways with HS256 auth, for tests that kill one."""
    pair = []
    for _ in range(2):
        gid = next(_gateway_ids)
        addr, proc, _ = cluster.gateway(gid, f"lease_ms = {PAIR_LEASE_MS}\n" + auth_config)
        pair.append(Gateway(addr, proc, gid))
    yield pair
    for g in pair:
        if g.proc.poll() is None:
            g.proc.kill()
            g.proc.wait()


@pytest.fixture
def restart(cluster):
    """``await restart(gateway)``: start a killed gateway again, same id, config and port."""
    from cluster import BIN, wait_ready

    async def run(gateway: Gateway) -> None:
        assert gateway.proc.poll() is not None, "restart() is for a gateway that was killed"
        log = cluster.root / f"gateway-{gateway.id}.log"
        cfg = cluster.root / f"gateway-{gateway.id}.toml"
        gateway.proc = cluster._spawn([BIN, "gateway", "--config", str(cfg)], log)
        await asyncio.to_thread(wait_ready, gateway.addr, gateway.proc, log)
    return run


@pytest.fixture
def forgotten(cluster):
    """``await forgotten(topic, gateway)``: wait until the cluster no longer counts ``gateway``
    (killed) among the topic's subscribers, so publishes to it do not wait for the dead one."""
    async def wait(topic: str, gateway: Gateway, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = await asyncio.to_thread(cluster.cli, "topic", topic, "--json", "--admin",
                                          cluster.admins[0], check=False)
            if out.returncode == 0 and gateway.id not in json.loads(out.stdout).get("gateways", []):
                return
            assert time.monotonic() < deadline, \
                f"gateway {gateway.id} still holds {topic}: {out.stdout}{out.stderr}"
            await asyncio.sleep(0.2)
    return wait


@pytest.fixture(scope="session")
def admin(cluster) -> Callable[..., str]:
    """Run `firetower cluster ARGS --admin ...`; its stdout (fails the test on an error)."""
    def run(*args: str) -> str:
        out = cluster.cli(*args, "--admin", cluster.admins[0], check=False)
        assert out.returncode == 0, f"firetower cluster {' '.join(args)} failed:\n{out.stdout}{out.stderr}"
        return out.stdout
    return run
