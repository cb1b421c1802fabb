#!/usr/bin/env bash
# Footprint under membership churn: one observed agent with the default packs in a cluster of
# N agents (default 10) on loopback; every CHURN seconds one of the others is killed (-9) and
# started again (same data dir: it rejoins as itself), so the observed agent keeps seeing
# deaths, suspicions, joins and refutations. Its RSS (file-backed and anonymous) is sampled
# every minute; serf agents go through the same churn beside it in the same run.
#
#   bash bench/churn_footprint.sh [MINUTES] [N] [CHURN]      (defaults 10, 10, 20)
set -euo pipefail
export OPSBRO_HOSTING_DRIVER=none
cd "$(dirname "$0")/.."
MINUTES="${1:-10}"; N="${2:-10}"; CHURN="${3:-20}"
command -v serf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq serf; }
cargo build --release -q -p opsbro-cli
BIN="$(pwd)/${CARGO_TARGET_DIR:-target}/release/opsbro"
TMP=$(mktemp -d)
declare -A OPID SPID OPORT SPORT
cleanup() { for p in "${OPID[@]}" "${SPID[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for i in $(seq 0 $((N - 1))); do OPORT[$i]=$(free_port); SPORT[$i]=$(free_port); done

start_opsbro() { # index
    local i=$1 seed=()
    [ "$i" -ne 0 ] && seed=(--seed "127.0.0.1:${OPORT[0]}")
    "$BIN" agent start --config /dev/null --data-dir "$TMP/o$i" --api-port 0 --port "${OPORT[$i]}" \
        --bind 127.0.0.1 --node-name "o$i" --log-level warn "${seed[@]}" >>"$TMP/o$i.log" 2>&1 &
    OPID[$i]=$!
}
start_serf() { # index
    local i=$1 join=()
    [ "$i" -ne 0 ] && join=(-join "127.0.0.1:${SPORT[0]}")
    serf agent -node="s$i" -bind="127.0.0.1:${SPORT[$i]}" -rpc-addr="127.0.0.1:$(free_port)" \
        -log-level=warn "${join[@]}" >>"$TMP/s$i.log" 2>&1 &
    SPID[$i]=$!
}
for i in $(seq 0 $((N - 1))); do start_opsbro "$i"; start_serf "$i"; done
sleep 20
mem() { awk '/^VmRSS|^RssFile|^RssAnon/ {printf "%.1f ", $2 / 1000}' "/proc/$1/status"; }
echo "minute  opsbro o0: RSS anon file (MB)   serf s0: RSS anon file (MB)"
echo "0       $(mem "${OPID[0]}")    $(mem "${SPID[0]}")"
start=$(date +%s); next_sample=$((start + 60)); end=$((start + MINUTES * 60)); kills=0
while [ "$(date +%s)" -lt "$end" ]; do
    victim=$(( 1 + RANDOM % (N - 1) ))
    kill -9 "${OPID[$victim]}" "${SPID[$victim]}" 2>/dev/null || true
    wait "${OPID[$victim]}" "${SPID[$victim]}" 2>/dev/null || true
    sleep 2
    start_opsbro "$victim"; start_serf "$victim"; kills=$((kills + 1))
    sleep "$CHURN"
    if [ "$(date +%s)" -ge "$next_sample" ]; then
        echo "$(( ($(date +%s) - start) / 60 ))       $(mem "${OPID[0]}")    $(mem "${SPID[0]}")"
        next_sample=$((next_sample + 60))
    fi
done
echo "$kills kill/restart cycles over $MINUTES min, $N agents each"
