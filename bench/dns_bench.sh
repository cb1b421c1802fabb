#!/usr/bin/env bash
# DNS on loopback: opsbro beside dnsmasq and unbound (Debian packages) answering the same name,
# same machine, same run, same load generator (dnsperf, Debian `dnsperf`).
#
#   1. saturated: dnsperf's defaults (1 client, 100 queries in flight: client-bound, as SPEC §14),
#      then 4 clients on 2 threads with 200 in flight → queries/s, and the p50/p99 latency from
#      dnsperf's per-query output (-v, written to a file so no reader competes for the CPU)
#   2. fixed load: 20,000 queries/s (4 clients, 2 threads), three runs → CPU of the server
#      process (% of one core: user + system time over the run; median and range), and the
#      latency at that rate
#
# Usage: bench/dns_bench.sh [seconds per run, default 10]   (builds the release binary first)
set -euo pipefail
# Agents started here never ask a cloud metadata service (that traffic would leave the machine).
export OPSBRO_HOSTING_DRIVER=none
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
for tool in dnsperf dnsmasq unbound dig; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install dnsperf dnsmasq-base unbound bind9-dnsutils" >&2; exit 1; }
done
# OPSBRO_BIN: measure another build (e.g. another profile) with the same script.
if [ -z "${OPSBRO_BIN:-}" ]; then cargo build --release --quiet; fi
cargo build --release --quiet -p opsbro-dns --example reflector
BIN="${OPSBRO_BIN:-${CARGO_TARGET_DIR:-target}/release/opsbro}"
WORK="$(mktemp -d /tmp/opsbro-dns-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
NAME=redis.group.opsbro
echo "$NAME A" > "$WORK/queries"
RESULTS="$WORK/results"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

latency() { # dnsperf -v output file → "p50/p99 ms"
    awk '$1 == ">" {print $NF}' "$1" | sort -g |
        awk '{v[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; h = int(NR / 2); if (h < 1) h = 1; printf "%.3f/%.3f", v[h] * 1000, v[i] * 1000}'
}

bench() { # label port pid
    local label=$1 port=$2 pid=$3
    [ "$label" = floor ] || for _ in $(seq 1 100); do dig -p "$port" @127.0.0.1 "$NAME" +short +time=1 | grep -q . && break; sleep 0.1; done
    local one one_lat many many_lat t0 t1 cpus=() fixed_lat
    one=$(dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -l "$DURATION" 2>&1 | awk '/Queries per second/ {print $4}')
    dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -l 3 -v >"$WORK/lat" 2>/dev/null
    one_lat=$(latency "$WORK/lat")
    many=$(dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -l "$DURATION" -c 4 -T 2 -q 200 2>&1 | awk '/Queries per second/ {print $4}')
    dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -l 3 -c 4 -T 2 -q 200 -v >"$WORK/lat" 2>/dev/null
    many_lat=$(latency "$WORK/lat")
    for _ in 1 2 3; do
        t0=$(ticks "$pid")
        dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries" -l "$DURATION" -Q 20000 -c 4 -T 2 -v >"$WORK/lat" 2>/dev/null
        t1=$(ticks "$pid")
        cpus+=("$(awk -v a="$t0" -v b="$t1" -v d="$DURATION" 'BEGIN {printf "%.1f", (b - a) / d}')")
    done
    fixed_lat=$(latency "$WORK/lat")
    local cpu
    cpu=$(printf '%s\n' "${cpus[@]}" | sort -g | awk '{v[NR] = $1} END {printf "%s%% (%s-%s)", v[2], v[1], v[3]}')
    printf '%-8s | %7.0f q/s, p50/p99 %s ms | %7.0f q/s, p50/p99 %s ms | %-18s, p50/p99 %s ms\n' \
        "$label" "$one" "$one_lat" "$many" "$many_lat" "$cpu" "$fixed_lat" | tee -a "$RESULTS"
}

mkdir -p "$WORK/opsbro"
printf 'groups: [redis]\n' > "$WORK/opsbro/agent.yml"
"$BIN" agent start --config "$WORK/opsbro/agent.yml" --data-dir "$WORK/opsbro/data" --bind 127.0.0.1 \
    --port 17601 --api-port 17701 --dns-port 17766 --log-level warn >"$WORK/opsbro.log" 2>&1 &
PIDS+=($!)
bench opsbro 17766 "${PIDS[-1]}"

# The same without receive coalescing (dns.coalesce: 0): every query answered as it arrives.
mkdir -p "$WORK/eager"
printf 'groups: [redis]\ndns:\n  coalesce: 0\n' > "$WORK/eager/agent.yml"
"$BIN" agent start --config "$WORK/eager/agent.yml" --data-dir "$WORK/eager/data" --bind 127.0.0.1 \
    --port 17602 --api-port 17702 --dns-port 17765 --log-level warn >"$WORK/eager.log" 2>&1 &
PIDS+=($!)
bench opsbro-0 17765 "${PIDS[-1]}"

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

# The floor: a zero-work reflector (crates/dns/examples/reflector.rs), the kernel and dnsperf alone.
"${CARGO_TARGET_DIR:-target}/release/examples/reflector" 127.0.0.1:17769 &
PIDS+=($!)
bench floor 17769 "${PIDS[-1]}"

echo
echo "== $(nproc) cores, ${DURATION}s per run; name: $NAME (one A record)"
echo "server   | dnsperf defaults (client-bound)        | 4 clients x 2 threads, 200 in flight | CPU at 20k q/s (median of 3, range), latency then"
cat "$RESULTS"
