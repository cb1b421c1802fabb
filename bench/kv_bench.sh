#!/usr/bin/env bash
# KV store throughput on loopback: opsbro beside etcd (Debian `etcd-server`), same machine, same
# run, same load generator (wrk, Debian `wrk`).
#
#   1. single node: GET of one key, durable PUT over 10,000 keys
#   2. three nodes: PUT acknowledged after 2 durable copies (opsbro write_acks: quorum) vs a
#      3-member etcd (raft: a majority of fsynced WALs)
#
# Usage: bench/kv_bench.sh [seconds per run, default 10]   (builds the release binary first)
set -euo pipefail
# Agents started here never ask a cloud metadata service (that traffic would leave the machine).
export OPSBRO_HOSTING_DRIVER=none
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
for tool in wrk etcd curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install wrk etcd-server curl" >&2; exit 1; }
done
# OPSBRO_BIN: measure another build (e.g. the previous commit's) with the same script.
if [ -z "${OPSBRO_BIN:-}" ]; then cargo build --release --quiet; fi
BIN="${OPSBRO_BIN:-${CARGO_TARGET_DIR:-target}/release/opsbro}"
token() { cat "$WORK/$1/api.token" 2>/dev/null || true; }  # builds before the API token had none
WORK="$(mktemp -d /tmp/opsbro-kv-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# wrk scripts: opsbro speaks raw bytes over PUT /kv/KEY; etcd's JSON gateway wants base64.
cat > "$WORK/b64.lua" <<'LUA'
local chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
LUA
cat > "$WORK/opsbro_put.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("PUT", "/kv/bench/k" .. (n % 10000), nil, "value-" .. n .. "-xxxxxxxxxxxxxxxxxxxxxxxx")
end
LUA
{ cat "$WORK/b64.lua"; cat <<'LUA'
local bodies = {}
for i = 0, 9999 do
  bodies[i] = '{"key":"' .. b64("bench/k" .. i) .. '","value":"' .. b64("value-" .. i .. "-xxxxxxxxxxxxxxxxxxxxxxxx") .. '"}'
end
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"}, bodies[n % 10000])
end
LUA
} > "$WORK/etcd_put.lua"
{ cat "$WORK/b64.lua"; cat <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"key":"' .. b64("bench/key") .. '"}'
LUA
} > "$WORK/etcd_get.lua"

RESULTS="$WORK/results"
run() { # name connections url [script] [extra header]
    local name=$1 conns=$2 url=$3 script=${4:-} header=${5:-X-None: 0}
    local out
    if [ -n "$script" ]; then
        out=$(wrk -t2 -c"$conns" -d"${DURATION}s" --latency -H "$header" -s "$script" "$url")
    else
        out=$(wrk -t2 -c"$conns" -d"${DURATION}s" --latency -H "$header" "$url")
    fi
    local rps p99 errors
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    errors=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    printf '%-44s %12s req/s   p99 %8s   non-2xx %s\n' "$name" "$rps" "$p99" "${errors:-0}" | tee -a "$RESULTS"
}

wait_http() { for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

start_opsbro() { # name api_port gossip_port [seed] [config file]
    local name=$1 api=$2 port=$3 seed=${4:-} config=${5:-/dev/null}
    mkdir -p "$WORK/$name"
    "$BIN" agent start --config "$config" --data-dir "$WORK/$name" --node-name "$name" --bind 127.0.0.1 \
        --api-port "$api" --port "$port" ${seed:+--seed "$seed"} --log-level warn >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$api/agent/state"
}

start_etcd() { # name client peer cluster
    local name=$1 client=$2 peer=$3 cluster=$4
    etcd --name "$name" --data-dir "$WORK/$name" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
}

echo "== single node ($(nproc) cores, ${DURATION}s per run, wrk -t2)" | tee -a "$RESULTS"
start_opsbro solo 17701 17601
# The KV routes need the agent's API token (written to its data dir at start).
AUTH="Authorization: Bearer $(token solo)"
curl -sf -H "$AUTH" -X PUT --data-binary 'hello' http://127.0.0.1:17701/kv/bench/key >/dev/null
run "opsbro GET (32 conns)" 32 "http://127.0.0.1:17701/kv/bench/key?raw" "" "$AUTH"
run "opsbro durable PUT (64 conns)" 64 "http://127.0.0.1:17701" "$WORK/opsbro_put.lua" "$AUTH"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

start_etcd e0 23790 23800 "e0=http://127.0.0.1:23800"
wait_http "http://127.0.0.1:23790/health"
curl -sf -X POST -d '{"key":"YmVuY2gva2V5","value":"aGVsbG8="}' http://127.0.0.1:23790/v3/kv/put >/dev/null
run "etcd GET /v3/kv/range (32 conns)" 32 "http://127.0.0.1:23790/v3/kv/range" "$WORK/etcd_get.lua"
run "etcd PUT /v3/kv/put (64 conns)" 64 "http://127.0.0.1:23790" "$WORK/etcd_put.lua"
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

# Three opsbro nodes (prefix, first API port, first gossip port, config), PUT through the first
# one, then stopped.
three_opsbro() {
    local p=$1 api=$2 port=$3 config=$4 label=$5
    start_opsbro "${p}1" "$api" "$port" "" "$config"
    start_opsbro "${p}2" $((api + 1)) $((port + 1)) "127.0.0.1:$port" "$config"
    start_opsbro "${p}3" $((api + 2)) $((port + 2)) "127.0.0.1:$port" "$config"
    for _ in $(seq 1 100); do
        [ "$(curl -sf "http://127.0.0.1:$api/agent/info" | grep -o '"ring_nodes":[0-9]*')" = '"ring_nodes":3' ] && break
        sleep 0.1
    done
    run "$label" 64 "http://127.0.0.1:$api" "$WORK/opsbro_put.lua" "Authorization: Bearer $(token "${p}1")"
    for _ in 1 2 3; do kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'; done
}

echo "== three nodes, writes through one node" | tee -a "$RESULTS"
three_opsbro n 17711 17611 /dev/null "opsbro PUT, 3 nodes, 2 durable copies (64 conns)"
# The same with a cluster key, as a real cluster runs: every frame sealed, and checked against
# the replay window (send time + nonce remembered).
echo "encryption_key: \"$("$BIN" agent keygen)\"" > "$WORK/keyed.yml"
three_opsbro k 17721 17621 "$WORK/keyed.yml" "opsbro PUT, 3 nodes, encrypted, 2 copies (64 conns)"

CLUSTER="m1=http://127.0.0.1:23811,m2=http://127.0.0.1:23812,m3=http://127.0.0.1:23813"
start_etcd m1 23801 23811 "$CLUSTER"
start_etcd m2 23802 23812 "$CLUSTER"
start_etcd m3 23803 23813 "$CLUSTER"
wait_http "http://127.0.0.1:23801/health"
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:23801/health | grep -q '"health":"true"' && break; sleep 0.1; done
run "etcd PUT, 3 members (64 conns)" 64 "http://127.0.0.1:23801" "$WORK/etcd_put.lua"

echo
cat "$RESULTS"
