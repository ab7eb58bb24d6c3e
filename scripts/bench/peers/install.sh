#!/usr/bin/env bash
# Install the peer systems of scripts/bench/compare.sh from Debian's packages (bookworm):
# nats-server, redis-server, etcd-server + etcd-client, and node-ws (Node.js `ws`, for the
# optional Node.js broadcast row). Idempotent: installs only what is missing, and runs
# `apt-get update` only when something is to be installed.
#
#   scripts/bench/peers/install.sh           # needs root (or sudo)
#   NODE=0 scripts/bench/peers/install.sh    # skip node-ws
set -euo pipefail

want=()
command -v nats-server >/dev/null || want+=(nats-server)
command -v redis-server >/dev/null || want+=(redis-server)
command -v redis-cli >/dev/null || want+=(redis-tools)
command -v etcd >/dev/null || want+=(etcd-server)
command -v etcdctl >/dev/null || want+=(etcd-client)
if [ "${NODE:-1}" = 1 ]; then
    command -v node >/dev/null || command -v nodejs >/dev/null || want+=(nodejs)
    [ -d /usr/share/nodejs/ws ] || want+=(node-ws)
fi

if [ ${#want[@]} -eq 0 ]; then
    echo "peers installed: $(command -v nats-server redis-server etcd | tr '\n' ' ')"
    exit 0
fi

sudo=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${want[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
echo "installing from Debian's packages: ${want[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# --no-install-recommends: no service units or extras beyond the binaries we start ourselves.
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${want[@]}"

# Debian starts the packaged services on install (redis-server, etcd listen on their default
# ports). The benchmark starts its own instances on other ports; stop the packaged ones so they
# neither compete for the cores nor hold ports. Ignored where there is no init system.
for svc in redis-server etcd nats-server; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
        "${sudo[@]}" systemctl stop "$svc" || true
        "${sudo[@]}" systemctl disable "$svc" >/dev/null 2>&1 || true
    elif command -v service >/dev/null; then
        "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true
    fi
done
echo "peers installed: $(command -v nats-server redis-server etcd | tr '\n' ' ')"
