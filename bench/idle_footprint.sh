#!/usr/bin/env bash
# Idle footprint of an agent with the default packs (collectors every 10 s, detectors, gossip),
# beside Debian's prometheus-node-exporter scraped every 10 s (the peer reading the same /proc
# data) and Debian's serf agent (the peer of the gossip layer), measured in the same run: RSS
# (and its file-backed and anonymous parts) at the end and CPU used over the window, from /proc.
# A second agent runs with OPSBRO_RELEASE_MEMORY=0 (pages start-up alone used stay mapped,
# glibc's default malloc arenas) to show what that release is worth.
#
# PLAIN_HOST=1 runs the agents in a mount namespace whose /etc has none of the application
# servers' configuration files (redis, memcached, nginx, apache, haproxy, rabbitmq, MariaDB,
# PostgreSQL, MongoDB): the CI machine has those packages installed (stopped) for the test
# suite, so a plain agent there detects them all and runs their collectors every 10 s, each
# failing to connect — not what an idle host with the default packs does.
#
#   bash bench/idle_footprint.sh [SECONDS]      (default 300)
set -euo pipefail
# Agents started here never ask a cloud metadata service (that traffic would leave the machine).
export OPSBRO_HOSTING_DRIVER=none
cd "$(dirname "$0")/.."
WINDOW="${1:-300}"
need=()
command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)
command -v serf >/dev/null || need+=(serf)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# OPSBRO_BIN: measure another build (e.g. another profile) with the same script.
if [ -z "${OPSBRO_BIN:-}" ]; then cargo build --release -q -p opsbro-cli; fi
BIN="${OPSBRO_BIN:-${CARGO_TARGET_DIR:-target}/release/opsbro}"
TMP=$(mktemp -d)
trap 'kill $OPSBRO_PID $KEEP_PID $NE_PID $SERF_PID 2>/dev/null || true; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

RUN=()
if [ "${PLAIN_HOST:-0}" = 1 ]; then
    cp -a /etc "$TMP/etc"
    rm -rf "$TMP"/etc/{redis,redis.conf,memcached.conf,nginx,apache2,httpd,haproxy,rabbitmq,mysql,my.cnf,postgresql,mongodb.conf,mongod.conf}
    RUN=(unshare -m sh -c 'mount --bind "$0" /etc && exec "$@"' "$TMP/etc")
fi
"${RUN[@]}" "$BIN" agent start --config /dev/null --data-dir "$TMP/data" --api-port 0 --port 0 --bind 127.0.0.1 --log-level warn >"$TMP/opsbro.log" 2>&1 &
OPSBRO_PID=$!
OPSBRO_RELEASE_MEMORY=0 "${RUN[@]}" "$BIN" agent start --config /dev/null --data-dir "$TMP/keep" --api-port 0 --port 0 --bind 127.0.0.1 --log-level warn >"$TMP/keep.log" 2>&1 &
KEEP_PID=$!
NE_PORT=$(free_port)
prometheus-node-exporter --web.listen-address="127.0.0.1:$NE_PORT" >"$TMP/ne.log" 2>&1 &
NE_PID=$!
serf agent -node=idle -bind="127.0.0.1:$(free_port)" -rpc-addr="127.0.0.1:$(free_port)" -log-level=warn >"$TMP/serf.log" 2>&1 &
SERF_PID=$!
sleep 45   # all settled (first collection, first scrape, the agent's first memory release at 30 s)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
mem() { awk '/^VmRSS|^RssFile|^RssAnon/ {printf "%s ", $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
o0=$(ticks $OPSBRO_PID); k0=$(ticks $KEEP_PID); n0=$(ticks $NE_PID); s0=$(ticks $SERF_PID); t0=$(date +%s.%N)
end=$(( $(date +%s) + WINDOW ))
while [ "$(date +%s)" -lt "$end" ]; do
    curl -s "http://127.0.0.1:$NE_PORT/metrics" >/dev/null
    sleep 10
done
o1=$(ticks $OPSBRO_PID); k1=$(ticks $KEEP_PID); n1=$(ticks $NE_PID); s1=$(ticks $SERF_PID); t1=$(date +%s.%N)
python3 - "$t0" "$t1" "$HZ" <<PY
import sys
t0, t1 = map(float, sys.argv[1:3]); hz = int(sys.argv[3]); wall = t1 - t0
print(f"window {wall:.0f} s")
for name, a, b, mem in [
    ("opsbro agent (default packs)", $o0, $o1, "$(mem $OPSBRO_PID)"),
    ("opsbro agent, OPSBRO_RELEASE_MEMORY=0", $k0, $k1, "$(mem $KEEP_PID)"),
    ("prometheus-node-exporter (scraped every 10 s)", $n0, $n1, "$(mem $NE_PID)"),
    ("serf agent (alone)", $s0, $s1, "$(mem $SERF_PID)"),
]:
    rss, anon, file = (int(v) / 1000 for v in mem.split()[:3])
    print(f"{name}: RSS {rss:.1f} MB (file {file:.1f}, anon {anon:.1f}), CPU {(b - a) / hz / wall * 100:.3f}% of one core")
PY
