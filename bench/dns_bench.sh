#!/usr/bin/env bash
# DNS on loopback: opsbro beside dnsmasq and unbound (Debian packages) answering the same name,
# same machine, same run, same load generator (dnsperf, Debian `dnsperf`).
#
#   1. saturated: dnsperf with 4 clients, 2 threads, 200 queries in flight → queries/s, and the
#      p99 latency from dnsperf's per-query output (-v)
#   2. fixed load: 20,000 queries/s for the run → CPU of the server process (% of one core)
#
# Usage: bench/dns_bench.sh [seconds per run, default 10]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
for tool in dnsperf dnsmasq unbound dig; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install dnsperf dnsmasq-base unbound bind9-dnsutils" >&2; exit 1; }
done
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/opsbro"
WORK="$(mktemp -d /tmp/opsbro-dns-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
NAME=redis.group.opsbro
echo "$NAME A" > "$WORK/queries"
RESULTS="$WORK/results"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

p99_of() { # per-query latencies from dnsperf -v → p99 in ms
    awk '$1 == ">" {print $NF}' | sort -g | awk '{v[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f", v[i] * 1000}'
}

bench() { # label port pid
    local label=$1 port=$2 pid=$3
    for _ in $(seq 1 100); do dig -p "$port" @127.0.0.1 "$NAME" +short +time=1 | grep -q . && break; sleep 0.1; done
    local one one_p99 many many_p99 t0 t1 cpu
    # Client-bound, as SPEC §14 measured the peers: dnsperf's defaults (1 client, 1 thread, 100
    # queries in flight).
    one=$(dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -l "$DURATION" 2>&1 | awk '/Queries per second/ {print $4}')
    one_p99=$(dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -l 3 -v 2>/dev/null | p99_of)
    # Harder: 4 clients on 2 threads, 200 in flight.
    many=$(dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -l "$DURATION" -c 4 -T 2 -q 200 2>&1 | awk '/Queries per second/ {print $4}')
    many_p99=$(dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -l 3 -c 4 -T 2 -q 200 -v 2>/dev/null | p99_of)
    t0=$(ticks "$pid")
    dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -l "$DURATION" -Q 20000 -c 4 -T 2 >/dev/null 2>&1
    t1=$(ticks "$pid")
    cpu=$(awk -v a="$t0" -v b="$t1" -v d="$DURATION" 'BEGIN {printf "%.1f", (b - a) / d}')
    printf '%-8s | %9.0f q/s p99 %6s ms | %9.0f q/s p99 %6s ms | %5s%% of a core\n' \
        "$label" "$one" "$one_p99" "$many" "$many_p99" "$cpu" | tee -a "$RESULTS"
}

mkdir -p "$WORK/opsbro"
printf 'groups: [redis]\n' > "$WORK/opsbro/agent.yml"
"$BIN" agent start --config "$WORK/opsbro/agent.yml" --data-dir "$WORK/opsbro/data" --bind 127.0.0.1 \
    --port 17601 --api-port 17701 --dns-port 17766 --log-level warn >"$WORK/opsbro.log" 2>&1 &
PIDS+=($!)
bench opsbro 17766 "${PIDS[-1]}"

dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 --port=17767 \
    --user=root --address=/$NAME/127.0.0.1 --log-facility=/dev/null 2>/dev/null &
PIDS+=($!)
bench dnsmasq 17767 "${PIDS[-1]}"

cat > "$WORK/unbound.conf" <<CONF
server:
    interface: 127.0.0.1
    port: 17768
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$WORK"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    num-threads: 2
    access-control: 127.0.0.0/8 allow
    local-zone: "opsbro." static
    local-data: "$NAME. 30 IN A 127.0.0.1"
remote-control:
    control-enable: no
CONF
unbound -d -c "$WORK/unbound.conf" >"$WORK/unbound.log" 2>&1 &
PIDS+=($!)
bench unbound 17768 "${PIDS[-1]}"

echo
echo "== $(nproc) cores, ${DURATION}s per run; name: $NAME (one A record)"
echo "server   | dnsperf defaults (client-bound) | 4 clients x 2 threads, 200 in flight | CPU at 20k q/s"
cat "$RESULTS"
