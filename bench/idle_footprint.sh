#!/usr/bin/env bash
# Idle footprint of an agent with the default packs (collectors every 10 s, detectors, gossip),
# beside Debian's prometheus-node-exporter scraped every 10 s (the peer reading the same /proc
# data), measured in the same run: RSS at the end and CPU used over the window, from /proc.
#
#   bash bench/idle_footprint.sh [SECONDS]      (default 300)
set -euo pipefail
# Agents started here never ask a cloud metadata service (that traffic would leave the machine).
export OPSBRO_HOSTING_DRIVER=none
cd "$(dirname "$0")/.."
WINDOW="${1:-300}"
command -v prometheus-node-exporter >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-node-exporter; }
cargo build --release -q -p opsbro-cli
BIN="${CARGO_TARGET_DIR:-target}/release/opsbro"
TMP=$(mktemp -d)
trap 'kill $OPSBRO_PID $NE_PID 2>/dev/null || true; rm -rf "$TMP"' EXIT

"$BIN" agent start --config /dev/null --data-dir "$TMP/data" --api-port 0 --port 0 --bind 127.0.0.1 --log-level warn >"$TMP/opsbro.log" 2>&1 &
OPSBRO_PID=$!
NE_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
prometheus-node-exporter --web.listen-address="127.0.0.1:$NE_PORT" >"$TMP/ne.log" 2>&1 &
NE_PID=$!
sleep 15   # both settled (first collection, first scrape)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
o0=$(ticks $OPSBRO_PID); n0=$(ticks $NE_PID); t0=$(date +%s.%N)
end=$(( $(date +%s) + WINDOW ))
while [ "$(date +%s)" -lt "$end" ]; do
    curl -s "http://127.0.0.1:$NE_PORT/metrics" >/dev/null
    sleep 10
done
o1=$(ticks $OPSBRO_PID); n1=$(ticks $NE_PID); t1=$(date +%s.%N)
python3 - "$o0" "$o1" "$n0" "$n1" "$t0" "$t1" "$HZ" "$(rss_kb $OPSBRO_PID)" "$(rss_kb $NE_PID)" <<'PY'
import sys
o0, o1, n0, n1 = map(int, sys.argv[1:5]); t0, t1 = map(float, sys.argv[5:7]); hz = int(sys.argv[7])
orss, nrss = int(sys.argv[8]), int(sys.argv[9])
wall = t1 - t0
cpu = lambda a, b: (b - a) / hz / wall * 100
print(f"window {wall:.0f} s")
print(f"opsbro agent (default packs): RSS {orss/1000:.1f} MB, CPU {cpu(o0, o1):.3f}% of one core")
print(f"prometheus-node-exporter (scraped every 10 s): RSS {nrss/1000:.1f} MB, CPU {cpu(n0, n1):.3f}% of one core")
PY
