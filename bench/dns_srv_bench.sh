#!/usr/bin/env bash
# DNS SRV on loopback: opsbro serving one service beside dnsmasq and unbound (Debian packages)
# answering the same SRV name, same machine, same run, same load generator (dnsperf, Debian
# `dnsperf`), measured as bench/dns_bench.sh measures A records:
#
#   1. saturated: dnsperf's defaults (1 client, 100 queries in flight: client-bound), then
#      4 clients on 2 threads with 200 in flight → queries/s, and the p50/p99 latency from
#      dnsperf's per-query output (-v, written to a file so no reader competes for the CPU)
#   2. fixed load: 20,000 queries/s (4 clients, 2 threads), three runs → CPU of the server
#      process (% of one core: user + system time over the run; median and range), and the
#      latency at that rate
#
# The name: `_web._tcp.service.opsbro SRV`, asked without EDNS (dnsperf's default). opsbro
# serves it from a service object (objects_dirs: [DIR], DIR/web.yml: `service: {name: web,
# port: 8080, tags: [primary]}`) on a node named `bench` at 127.0.0.1: one SRV record
# `1 1 8080 bench.node.opsbro.` and the target's A record in the additional section. The peers
# hold the same two records: dnsmasq (--srv-host, --host-record) answers with the additional A
# too; unbound (local-data for both records) answers the SRV record alone — unbound 1.17 adds
# no additional records to local-data answers (nor to auth-zone ones), so its answer is the
# smaller one. Each server's answer shape (records per section, bytes) is printed beside its
# figures; read the comparison with it.
#
# Usage: bench/dns_srv_bench.sh [seconds per run, default 10]   (builds the release binary first)
set -euo pipefail
# Agents started here never ask a cloud metadata service (that traffic would leave the machine).
export OPSBRO_HOSTING_DRIVER=none
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
for tool in dnsperf dnsmasq unbound dig; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install dnsperf dnsmasq-base unbound bind9-dnsutils" >&2; exit 1; }
done
cargo build --release --quiet
cargo build --release --quiet -p opsbro-dns --example reflector
BIN="${CARGO_TARGET_DIR:-target}/release/opsbro"
WORK="$(mktemp -d /tmp/opsbro-dns-srv-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
NAME=_web._tcp.service.opsbro
NODE=bench
TARGET="$NODE.node.opsbro."
ADDR=127.0.0.1
echo "$NAME SRV" > "$WORK/queries"
RESULTS="$WORK/results"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

latency() { # dnsperf -v output file → "p50/p99 ms"
    awk '$1 == ">" {print $NF}' "$1" | sort -g |
        awk '{v[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; h = int(NR / 2); if (h < 1) h = 1; printf "%.3f/%.3f", v[h] * 1000, v[i] * 1000}'
}

ready() { # label port log: wait (10 s at most) until the server answers the SRV record
    local label=$1 port=$2 log=$3
    for _ in $(seq 1 100); do
        dig -p "$port" @127.0.0.1 "$NAME" SRV +short +time=1 +tries=1 | grep -q "8080 $TARGET" && return 0
        sleep 0.1
    done
    echo "$label (port $port) does not answer $NAME SRV with '1 1 8080 $TARGET':" >&2
    dig -p "$port" @127.0.0.1 "$NAME" SRV +time=1 +tries=1 >&2 || true
    [ -z "$log" ] || { echo "--- $log:" >&2; tail -n 20 "$log" >&2; }
    [ "$label" != opsbro ] || echo "(the agent must serve the service object of its objects_dirs, web.yml, as $NAME)" >&2
    exit 1
}

shape() { # port → "answers+additionals (OPT excluded), bytes" of the answer dnsperf gets (no EDNS)
    dig -p "$1" @127.0.0.1 "$NAME" SRV +noedns +time=1 +tries=1 |
        awk '/^;; flags:/ {for (i = 1; i <= NF; i++) {if ($i == "ANSWER:") an = $(i + 1); if ($i == "ADDITIONAL:") ad = $(i + 1)}}
             /MSG SIZE/ {size = $NF}
             END {gsub(",", "", an); gsub(",", "", ad); printf "%s+%s rec, %s B", an, ad, size}'
}

bench() { # label port pid [log]
    local label=$1 port=$2 pid=$3 log=${4:-}
    [ "$label" = floor ] || ready "$label" "$port" "$log"
    local one one_lat many many_lat t0 t1 cpus=() fixed_lat form="-"
    [ "$label" = floor ] || form=$(shape "$port")
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
    printf '%-8s | %-16s | %7.0f q/s, p50/p99 %s ms | %7.0f q/s, p50/p99 %s ms | %-18s, p50/p99 %s ms\n' \
        "$label" "$form" "$one" "$one_lat" "$many" "$many_lat" "$cpu" "$fixed_lat" | tee -a "$RESULTS"
}

agent() { # dir port gossip-port api-port [extra config lines]: an agent on 127.0.0.1 serving web.yml
    local dir=$1 dns=$2 gossip=$3 api=$4 extra=${5:-}
    mkdir -p "$dir/objects"
    printf 'node_name: %s\nobjects_dirs: [%s]\n%s' "$NODE" "$dir/objects" "$extra" > "$dir/agent.yml"
    cat > "$dir/objects/web.yml" <<'YAML'
service:
  name: web
  port: 8080
  tags: [primary]
YAML
    "$BIN" agent start --config "$dir/agent.yml" --data-dir "$dir/data" --bind "$ADDR" \
        --port "$gossip" --api-port "$api" --dns-port "$dns" --log-level warn >"$dir.log" 2>&1 &
    PIDS+=($!)
}

agent "$WORK/opsbro" 17866 17611 17711
bench opsbro 17866 "${PIDS[-1]}" "$WORK/opsbro.log"

# The same without receive coalescing (dns.coalesce: 0): every query answered as it arrives.
agent "$WORK/eager" 17865 17612 17712 $'dns:\n  coalesce: 0\n'
bench opsbro-0 17865 "${PIDS[-1]}" "$WORK/eager.log"

# dnsmasq: the SRV record and its target's A (which it adds to the additional section).
dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 --port=17867 \
    --user=root --local-ttl=30 --srv-host="$NAME,${TARGET%.},8080,1,1" --host-record="${TARGET%.},$ADDR" \
    --log-facility=/dev/null 2>/dev/null &
PIDS+=($!)
bench dnsmasq 17867 "${PIDS[-1]}"

# unbound: local-data for both records (its answer carries the SRV record only, see above).
cat > "$WORK/unbound.conf" <<CONF
server:
    interface: 127.0.0.1
    port: 17868
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
    local-data: "$NAME. 30 IN SRV 1 1 8080 $TARGET"
    local-data: "$TARGET 30 IN A $ADDR"
remote-control:
    control-enable: no
CONF
unbound -d -c "$WORK/unbound.conf" >"$WORK/unbound.log" 2>&1 &
PIDS+=($!)
bench unbound 17868 "${PIDS[-1]}" "$WORK/unbound.log"

# The floor: a zero-work reflector (crates/dns/examples/reflector.rs), the kernel and dnsperf alone.
"${CARGO_TARGET_DIR:-target}/release/examples/reflector" 127.0.0.1:17869 &
PIDS+=($!)
bench floor 17869 "${PIDS[-1]}"

echo
echo "== $(nproc) cores, ${DURATION}s per run; name: $NAME SRV (no EDNS; answer shape: answer+additional records, bytes)"
echo "server   | answer           | dnsperf defaults (client-bound)        | 4 clients x 2 threads, 200 in flight | CPU at 20k q/s (median of 3, range), latency then"
cat "$RESULTS"
