"""Start a Firetower cluster for the acceptance tests: `firetower dev` (three managers and an
anonymous gateway) plus gateways of our own with a config file, all on loopback.

FIRETOWER_BIN names the binary (the Rust test that runs this suite sets it)."""

import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

BIN = os.environ.get("FIRETOWER_BIN", str(Path(__file__).resolve().parents[2] / "target/debug/firetower"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_block(n):
    """A first port with the next n-1 free too (dev uses consecutive ports)."""
    for _ in range(200):
        base = random.randint(20000, 40000)
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            for s in socks:
                s.close()
            return base
        except OSError:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def wait_ready(addr, proc, log, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{Path(log).read_text()}")
        try:
            with urllib.request.urlopen(f"http://{addr}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{addr} never became ready:\n{Path(log).read_text()}")


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.procs = []
        self.base = free_block(9)
        self.admins = [f"127.0.0.1:{self.base + 2 * i + 1}" for i in range(3)]
        self.dev_gateway = f"127.0.0.1:{free_port()}"
        self.tls_dir = root / "dev" / "tls"
        log = root / "dev.log"
        p = self._spawn([BIN, "dev", "--data-dir", str(root / "dev"), "--base-port", str(self.base),
                         "--listen", self.dev_gateway], log)
        wait_ready(self.dev_gateway, p, log)

    def _spawn(self, args, log, env=None):
        e = dict(os.environ)
        e.setdefault("FIRETOWER_LOG", "info,openraft=warn")
        e.update(env or {})
        with open(log, "ab") as out:
            p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=e)
        self.procs.append(p)
        return p

    def gateway(self, gid, config_text, wait=True):
        """Start `firetower gateway --config` with `config_text` (TOML) appended to the cluster
        part; returns (address, process, log path)."""
        subprocess.run([BIN, "certs", "issue", "--dir", str(self.tls_dir), "--gateway", str(gid)],
                       check=True, capture_output=True)
        listen = f"127.0.0.1:{free_port()}"
        cfg = self.root / f"gateway-{gid}.toml"
        managers = ", ".join(f'"{a}"' for a in self.admins)
        cfg.write_text(f'id = {gid}\nlisten = "{listen}"\nmanagers = [{managers}]\n'
                       + config_text + f'\n[tls]\ndir = "{self.tls_dir}"\n')
        log = self.root / f"gateway-{gid}.log"
        p = self._spawn([BIN, "gateway", "--config", str(cfg)], log)
        if wait:
            wait_ready(listen, p, log)
        return listen, p, log

    def cli(self, *args, check=True):
        return subprocess.run([BIN, "cluster", "--tls-dir", str(self.tls_dir), *args],
                              capture_output=True, text=True, check=check)

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
