#!/usr/bin/env bash
# KV at scale: 3 opsbro agents holding KEYS keys of 100 bytes (default 1,000,000; every agent
# holds every key: replication factor 3) beside a 3-member etcd holding the same keys, in the
# same run on the same machine. Measures:
#   1. loading time (opsbro: `opsbro kv import` of an export file; etcd: txns of 128 puts);
#   2. idle: RSS of every process each minute and CPU over the window (default 10 min) — the
#      cost of a store that nobody writes to, which must not depend on its size;
#   3. repair: one agent is stopped, 1% of KEYS new keys are written through another, the agent
#      is started again; the time until it holds them all (anti-entropy every 30 s).
#
#   bash bench/kv_scale.sh [KEYS] [IDLE_MINUTES]
# Needs Debian etcd-server + etcd-client (installed when missing), python3, curl.
set -euo pipefail
export OPSBRO_HOSTING_DRIVER=none
cd "$(dirname "$0")/.."
KEYS="${1:-1000000}"; IDLE_MIN="${2:-10}"
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client; }
if [ -z "${OPSBRO_BIN:-}" ]; then cargo build --release -q -p opsbro-cli; fi
BIN="${OPSBRO_BIN:-$(pwd)/${CARGO_TARGET_DIR:-target}/release/opsbro}"
WORK="$(mktemp -d /var/tmp/opsbro-kv-scale.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
wait_http() { for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
declare -A PID
start_opsbro() { # name api gossip [seed]
    local name=$1 api=$2 port=$3 seed=${4:-}
    mkdir -p "$WORK/$name"
    "$BIN" agent start --config /dev/null --data-dir "$WORK/$name" --node-name "$name" --bind 127.0.0.1 \
        --api-port "$api" --port "$port" ${seed:+--seed "$seed"} --log-level warn >>"$WORK/$name.log" 2>&1 &
    PID[$name]=$!; PIDS+=($!)
    wait_http "http://127.0.0.1:$api/agent/state"
}
start_etcd() { # name client peer
    local name=$1 client=$2 peer=$3
    etcd --name "$name" --data-dir "$WORK/$name" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803" \
        --initial-cluster-state new --quota-backend-bytes 8589934592 --log-level error >"$WORK/$name.log" 2>&1 &
    PID[$name]=$!; PIDS+=($!)
}
info() { curl -sf "http://127.0.0.1:$1/agent/info"; }
local_entries() { info "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["kv"]["local_entries"])'; }

# The same keys for both: scale/0000000 .. with 100-byte values.
python3 - "$KEYS" "$WORK/load.ndjson" "$WORK/extra.ndjson" <<'PY'
import base64, json, sys, time
n = int(sys.argv[1]); stamp = (int(time.time() * 1000) - 5000) << 16
def write(path, keys):
    with open(path, "w") as f:
        f.write(json.dumps({"format": "opsbro-kv-export", "version": 1, "created_ms": 0}) + "\n")
        for k in keys:
            v = base64.b64encode((f"{k}:" + "x" * 100)[:100].encode()).decode()
            f.write(f'{{"key":"{k}","value":"{v}","modify_index":{stamp},"create_index":{stamp}}}\n')
        f.write(json.dumps({"end": "opsbro-kv-export", "entries": len(keys)}) + "\n")
write(sys.argv[2], [f"scale/{i:07d}" for i in range(n)])
write(sys.argv[3], [f"extra/{i:07d}" for i in range(n // 100)])
PY

echo "== $KEYS keys of 100 B, 3 nodes each ($(nproc) cores)"
start_opsbro n1 17801 17901
start_opsbro n2 17802 17902 127.0.0.1:17901
start_opsbro n3 17803 17903 127.0.0.1:17901
for _ in $(seq 1 100); do [ "$(info 17801 | grep -o '"ring_nodes":[0-9]*')" = '"ring_nodes":3' ] && break; sleep 0.1; done
t0=$(date +%s.%N)
OPSBRO_API=127.0.0.1:17801 "$BIN" --token-file "$WORK/n1/api.token" kv import "$WORK/load.ndjson" >"$WORK/import.log" 2>&1
t1=$(date +%s.%N)
echo "opsbro load (kv import through n1): $(python3 -c "print(f'{$t1 - $t0:.0f}')") s — $(tail -1 "$WORK/import.log")"

start_etcd e1 23791 23801; start_etcd e2 23792 23802; start_etcd e3 23793 23803
wait_http http://127.0.0.1:23791/health
t0=$(date +%s.%N)
python3 - "$KEYS" <<'PY'
import base64, json, sys, urllib.request
n = int(sys.argv[1]); b = lambda s: base64.b64encode(s.encode()).decode()
for start in range(0, n, 128):
    ops = [{"requestPut": {"key": b(f"scale/{i:07d}"), "value": b((f"scale/{i:07d}:" + "x" * 100)[:100])}}
           for i in range(start, min(n, start + 128))]
    req = urllib.request.Request("http://127.0.0.1:23791/v3/kv/txn", data=json.dumps({"success": ops}).encode(),
                                 headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
PY
t1=$(date +%s.%N)
echo "etcd load (txns of 128 puts through e1): $(python3 -c "print(f'{$t1 - $t0:.0f}')") s, $(curl -sf -X POST -d '{"key":"c2NhbGUv","range_end":"c2NhbGUw","count_only":true}' http://127.0.0.1:23791/v3/kv/range | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])') keys"
for n in 17801 17802 17803; do echo "opsbro on :$n holds $(local_entries $n) entries"; done

# 2. Idle.
sleep 30
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1000}' "/proc/$1/status"; }
NAMES=(n1 n2 n3 e1 e2 e3)
declare -A T0
for n in "${NAMES[@]}"; do T0[$n]=$(ticks "${PID[$n]}"); done
s0=$(date +%s.%N)
echo "minute   RSS MB: ${NAMES[*]}"
for m in $(seq 0 "$IDLE_MIN"); do
    line="$m"; for n in "${NAMES[@]}"; do line="$line  $(rss "${PID[$n]}")"; done; echo "$line"
    [ "$m" -lt "$IDLE_MIN" ] && sleep 60
done
s1=$(date +%s.%N); HZ=$(getconf CLK_TCK)
for n in "${NAMES[@]}"; do
    t1=$(ticks "${PID[$n]}")
    awk -v n="$n" -v a="${T0[$n]}" -v b="$t1" -v hz="$HZ" -v s0="$s0" -v s1="$s1" \
        'BEGIN {printf "%s idle CPU: %.3f%% of one core\n", n, (b - a) / hz / (s1 - s0) * 100}'
done
for n in 1 2 3; do echo "n$n sled files: $(du -sm "$WORK/n$n" | cut -f1) MB"; done
for n in 1 2 3; do echo "e$n data: $(du -sm "$WORK/e$n" | cut -f1) MB"; done

# 3. Repair: n3 misses 1% of the writes.
kill "${PID[n3]}"; wait "${PID[n3]}" 2>/dev/null || true
OPSBRO_API=127.0.0.1:17801 "$BIN" --token-file "$WORK/n1/api.token" kv import "$WORK/extra.ndjson" >"$WORK/extra.log" 2>&1
want=$(( KEYS + KEYS / 100 ))
t0=$(date +%s.%N)
start_opsbro n3 17803 17903 127.0.0.1:17901
while [ "$(local_entries 17803)" -lt "$want" ]; do
    sleep 1
    if python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $t0 > 300 else 1)"; then
        echo "n3 not repaired after 300 s: $(local_entries 17803) of $want"; exit 1
    fi
done
t1=$(date +%s.%N)
echo "n3 missed $(( KEYS / 100 )) writes (1%): holds all $want entries $(python3 -c "print(f'{$t1 - $t0:.1f}')") s after its restart (anti-entropy every 30 s)"
