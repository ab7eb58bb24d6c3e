# Start and stop the systems of scripts/bench/compare.sh on loopback, each with its data in a
# temporary directory. Sourced by compare.sh, start.sh and stop.sh (bash).
#
#   peer_start SYSTEM    start it; sets PEER_URL (what the load generator connects to),
#                        PEER_PIDS (server pids, comma separated, for --server-pid) and
#                        PEER_ENDPOINTS (control-plane addresses, where there are some)
#   peer_stop SYSTEM     stop it (SIGTERM, then SIGKILL after 10 s), remove its data
#   peer_kill_leader SYSTEM   kill -9 the current leader (etcd, firetower-cluster); prints its pid
#
# SYSTEM: firetower (3 managers + 1 gateway), firetower-cluster (3 managers only), nats,
# redis, node-ws, etcd (3 members). Every address is on 127.0.0.1; ports:
#   firetower  managers QUIC 7100/7102/7104, admin 7101/7103/7105; gateway 7200
#   nats       client 7300, WebSocket 7301      redis   7310      node-ws 7320
#   etcd       clients 7331-7333, peers 7341-7343
# Firetower runs with mutual TLS (certificates under its data directory; FIRETOWER_TLS_DIR is
# exported for the CLI calls that follow); FIRETOWER_TLS=off runs it with --insecure instead,
# for the data-path scenarios (fanout, topics, idle) of scripts/bench/tls-compare.sh.
# FIRETOWER_CLIENT_TLS=on gives the gateway a client certificate (`firetower certs client-tls`,
# [client_tls]): PEER_URL is then wss://, and PEER_CA the CA file for `bench --ca`
# (scripts/bench/client-tls-compare.sh).
# Needs: PEER_WORK (a scratch directory), FIRETOWER_BIN for the Firetower systems; jq, curl.

PEER_WORK=${PEER_WORK:-/tmp/firetower-peers}
FIRETOWER_BIN=${FIRETOWER_BIN:-target/release/firetower}
PEERS_DIR=${PEERS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
PEER_LOG_LEVEL=${PEER_LOG_LEVEL:-warn}

_peer_log() { echo "[peers] $*" >&2; }

# Whether something accepts TCP connections on 127.0.0.1:PORT.
_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_ports_free() {
    local p
    for p in "$@"; do
        if _port_open "$p"; then
            _peer_log "port 127.0.0.1:$p is already in use (a leftover run? scripts/bench/peers/stop.sh all)"
            return 1
        fi
    done
}

_wait_port() { # PORT [SECONDS]
    local i
    for i in $(seq 1 $((${2:-30} * 10))); do
        _port_open "$1" && return 0
        sleep 0.1
    done
    _peer_log "nothing listens on 127.0.0.1:$1 after ${2:-30} s"
    return 1
}

# Start a server in the background, recording its pid under $PEER_WORK/pids/SYSTEM.
_spawn() { # SYSTEM LOGFILE CMD...
    local sys=$1 log=$2
    shift 2
    mkdir -p "$PEER_WORK/pids"
    "$@" >"$log" 2>&1 &
    echo $! >>"$PEER_WORK/pids/$sys"
    echo $!
}

_pids_of() { [ -f "$PEER_WORK/pids/$1" ] && cat "$PEER_WORK/pids/$1"; }

_join() { local IFS=,; echo "$*"; }

peer_start() {
    local sys=$1 dir pids=() i
    dir="$PEER_WORK/$sys"
    rm -rf "$dir" "$PEER_WORK/pids/$sys"
    mkdir -p "$dir"
    PEER_URL="" PEER_PIDS="" PEER_ENDPOINTS=""
    case $sys in
    firetower | firetower-cluster)
        [ -x "$FIRETOWER_BIN" ] || { _peer_log "no $FIRETOWER_BIN"; return 1; }
        _ports_free 7101 7103 7105 7200 || return 1
        # Secure like production (one CA, a certificate per manager and for gateway 1);
        # FIRETOWER_TLS=off runs the same cluster with --insecure, for the TLS ratio.
        local tls=()
        if [ "${FIRETOWER_TLS:-on}" = off ]; then
            tls=(--insecure)
            unset FIRETOWER_TLS_DIR
        else
            "$FIRETOWER_BIN" certs init --dir "$dir/tls" >/dev/null || return 1
            for i in 1 2 3; do "$FIRETOWER_BIN" certs issue --dir "$dir/tls" --manager "$i" >/dev/null; done
            "$FIRETOWER_BIN" certs issue --dir "$dir/tls" --gateway 1 >/dev/null || return 1
            tls=(--tls-dir "$dir/tls")
            # The CLI calls that follow (cluster members, bench commits) find it here.
            export FIRETOWER_TLS_DIR="$dir/tls"
        fi
        FIRETOWER_TLS_ARGS=("${tls[@]}")
        for i in 1 2 3; do
            pids+=("$(_spawn "$sys" "$dir/manager-$i.log" env FIRETOWER_LOG="$PEER_LOG_LEVEL" \
                "$FIRETOWER_BIN" manager --id "$i" --quic "127.0.0.1:$((7098 + 2 * i))" \
                --admin "127.0.0.1:$((7099 + 2 * i))" --data-dir "$dir/m$i" "${tls[@]}")")
        done
        for i in 1 2 3; do _wait_port $((7099 + 2 * i)) || return 1; done
        "$FIRETOWER_BIN" cluster "${tls[@]}" init --admin 127.0.0.1:7101 --member 127.0.0.1:7103 \
            --member 127.0.0.1:7105 >/dev/null || return 1
        for i in $(seq 1 150); do
            if "$FIRETOWER_BIN" cluster "${tls[@]}" members --admin 127.0.0.1:7101 --json 2>/dev/null |
                jq -e '[.groups[].leader] | all(. != null and . > 0)' >/dev/null; then
                break
            fi
            [ "$i" = 150 ] && { _peer_log "the Firetower cluster elected no leaders"; return 1; }
            sleep 0.2
        done
        PEER_ENDPOINTS=127.0.0.1:7100,127.0.0.1:7102,127.0.0.1:7104
        if [ "$sys" = firetower ]; then
            local gw client_tls=() scheme=http curl_ca=()
            PEER_CA=""
            if [ "${FIRETOWER_CLIENT_TLS:-off}" = on ]; then
                "$FIRETOWER_BIN" certs client-tls --dir "$dir/client-tls" >/dev/null || return 1
                client_tls=(--client-tls-cert "$dir/client-tls/server.pem"
                    --client-tls-key "$dir/client-tls/server-key.pem")
                PEER_CA="$dir/client-tls/ca.pem"
                scheme=https
                curl_ca=(--cacert "$PEER_CA")
            fi
            gw=$(_spawn "$sys" "$dir/gateway.log" env FIRETOWER_LOG="$PEER_LOG_LEVEL" \
                "$FIRETOWER_BIN" gateway --id 1 --listen 127.0.0.1:7200 \
                --managers 127.0.0.1:7101,127.0.0.1:7103,127.0.0.1:7105 --allow-anonymous "${tls[@]}" "${client_tls[@]}")
            for i in $(seq 1 150); do
                curl -fsS "${curl_ca[@]}" "$scheme://127.0.0.1:7200/readyz" >/dev/null 2>&1 && break
                [ "$i" = 150 ] && { _peer_log "the gateway did not become ready"; return 1; }
                sleep 0.2
            done
            if [ "$scheme" = https ]; then PEER_URL=wss://127.0.0.1:7200/ws; else PEER_URL=ws://127.0.0.1:7200/ws; fi
            pids=("$gw" "${pids[@]}") # the gateway first: per-process numbers name it first
        fi
        ;;
    nats)
        command -v nats-server >/dev/null || { _peer_log "nats-server missing: scripts/bench/peers/install.sh"; return 1; }
        _ports_free 7300 7301 || return 1
        cat >"$dir/nats.conf" <<EOF
listen: "127.0.0.1:7300"
max_payload: 1048576
max_connections: 100000
websocket {
  listen: "127.0.0.1:7301"
  no_tls: true
  compression: false
}
EOF
        pids+=("$(_spawn "$sys" "$dir/nats.log" nats-server -c "$dir/nats.conf")")
        _wait_port 7301 || return 1
        PEER_URL=ws://127.0.0.1:7301/
        ;;
    redis)
        command -v redis-server >/dev/null || { _peer_log "redis-server missing: scripts/bench/peers/install.sh"; return 1; }
        _ports_free 7310 || return 1
        # Bound to 127.0.0.1 only; protected mode off because it refuses 127.0.0.2+ sources.
        # maxclients: as many as one process may open here (Redis keeps 32 descriptors spare).
        pids+=("$(_spawn "$sys" "$dir/redis.log" redis-server --bind 127.0.0.1 --port 7310 \
            --save '' --appendonly no --protected-mode no --dir "$dir" \
            --maxclients $(($(ulimit -Hn) - 64)) --loglevel warning)")
        _wait_port 7310 || return 1
        PEER_URL=redis://127.0.0.1:7310
        ;;
    node-ws)
        command -v node >/dev/null || { _peer_log "node missing: scripts/bench/peers/install.sh"; return 1; }
        _ports_free 7320 || return 1
        pids+=("$(_spawn "$sys" "$dir/node-ws.log" env NODE_PATH=/usr/share/nodejs \
            node --max-old-space-size=4096 "$PEERS_DIR/ws-broadcast.js" 127.0.0.1 7320)")
        _wait_port 7320 || return 1
        PEER_URL=ws://127.0.0.1:7320/ws
        ;;
    etcd)
        command -v etcd >/dev/null || { _peer_log "etcd missing: scripts/bench/peers/install.sh"; return 1; }
        _ports_free 7331 7332 7333 7341 7342 7343 || return 1
        local cluster=e1=http://127.0.0.1:7341,e2=http://127.0.0.1:7342,e3=http://127.0.0.1:7343
        for i in 1 2 3; do
            # fsync on (etcd's default; --unsafe-no-fsync is not given).
            pids+=("$(_spawn "$sys" "$dir/e$i.log" etcd --name "e$i" --data-dir "$dir/e$i" \
                --listen-client-urls "http://127.0.0.1:733$i" --advertise-client-urls "http://127.0.0.1:733$i" \
                --listen-peer-urls "http://127.0.0.1:734$i" --initial-advertise-peer-urls "http://127.0.0.1:734$i" \
                --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token firetower-bench \
                --logger zap --log-level "$PEER_LOG_LEVEL")")
        done
        for i in 1 2 3; do _wait_port "733$i" || return 1; done
        for i in $(seq 1 150); do
            [ -n "$(etcd_leader_index)" ] && break
            [ "$i" = 150 ] && { _peer_log "etcd elected no leader"; return 1; }
            sleep 0.2
        done
        PEER_ENDPOINTS=http://127.0.0.1:7331,http://127.0.0.1:7332,http://127.0.0.1:7333
        ;;
    *)
        _peer_log "unknown system $sys (firetower, firetower-cluster, nats, redis, node-ws, etcd)"
        return 2
        ;;
    esac
    PEER_PIDS=$(_join "${pids[@]}")
    _peer_log "$sys started: pids $PEER_PIDS ${PEER_URL:+url $PEER_URL} ${PEER_ENDPOINTS:+endpoints $PEER_ENDPOINTS}"
}

peer_stop() {
    local sys=$1 p i alive
    for p in $(_pids_of "$sys"); do kill "$p" 2>/dev/null || true; done
    for i in $(seq 1 100); do
        alive=0
        for p in $(_pids_of "$sys"); do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in $(_pids_of "$sys"); do kill -9 "$p" 2>/dev/null || true; done
    for p in $(_pids_of "$sys"); do wait "$p" 2>/dev/null || true; done
    rm -rf "${PEER_WORK:?}/$sys" "$PEER_WORK/pids/$sys"
}

# 1-based index of the etcd member that is leader (empty if none is known).
etcd_leader_index() {
    local i s
    for i in 1 2 3; do
        s=$(curl -fsS -m 2 -X POST "http://127.0.0.1:733$i/v3/maintenance/status" -d '{}' 2>/dev/null) || continue
        if echo "$s" | jq -e '.leader != null and .header.member_id == .leader' >/dev/null 2>&1; then
            echo "$i"
            return 0
        fi
    done
}

# The Firetower manager id that leads the most groups.
firetower_leader_id() {
    "$FIRETOWER_BIN" cluster "${FIRETOWER_TLS_ARGS[@]}" members --admin 127.0.0.1:7101 --json 2>/dev/null |
        jq -r '[.groups[].leader | select(. != null)] | group_by(.) | max_by(length) | .[0] // empty'
}

# kill -9 the leader; prints "PID" of the killed process.
peer_kill_leader() {
    local sys=$1 idx pids
    mapfile -t pids < <(_pids_of "$sys")
    case $sys in
    etcd) idx=$(etcd_leader_index) ;;
    firetower | firetower-cluster) idx=$(firetower_leader_id) ;;
    *) _peer_log "$sys has no leader to kill"; return 1 ;;
    esac
    [ -n "$idx" ] || { _peer_log "no leader of $sys found"; return 1; }
    # Managers and etcd members were started first, in id order.
    local pid=${pids[$((idx - 1))]}
    kill -9 "$pid"
    echo "$pid"
}
