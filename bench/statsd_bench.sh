#!/usr/bin/env bash
# statsd on loopback: opsbro beside the reference statsd (etsy `statsd` from npm, run with node),
# same machine, same run, same load generator (bench/statsd_load: UDP GSO, so one send() makes
# up to 64 datagrams and the generator is not the limit on 2 cores).
#
# For 20 lines per datagram and for 1 line per datagram the offered rate goes up step by step;
# at each step the generator sends for DURATION seconds and the server's own counter of lines
# received (opsbro: `agent info` metrics.statsd_lines; etsy: `statsd.metrics_received` on its
# admin port) gives the loss. The result is the highest rate with < 0.1% loss. Both servers get
# the same socket receive buffer (net.core.rmem_default/rmem_max raised to 16 MiB for the run).
#
# Usage: bench/statsd_bench.sh [seconds per step, default 5]
set -euo pipefail
# Agents started here never ask a cloud metadata service (that traffic would leave the machine).
export OPSBRO_HOSTING_DRIVER=none
cd "$(dirname "$0")/.."
DURATION="${1:-5}"
command -v node >/dev/null || { echo "missing node: apt-get install nodejs npm" >&2; exit 1; }
ETSY="${ETSY_STATSD:-/var/tmp/etsy-statsd}"
if [ ! -f "$ETSY/node_modules/statsd/stats.js" ]; then
    mkdir -p "$ETSY" && (cd "$ETSY" && npm install --silent --no-audit --no-fund statsd >/dev/null)
fi
# OPSBRO_BIN: measure another build (e.g. another profile) with the same script.
if [ -z "${OPSBRO_BIN:-}" ]; then cargo build --release --quiet; fi
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="${OPSBRO_BIN:-$TARGET/release/opsbro}"
GEN_TARGET=/var/tmp/statsd-load-target
CARGO_TARGET_DIR=$GEN_TARGET cargo build --release --quiet --manifest-path bench/statsd_load/Cargo.toml
GEN="$GEN_TARGET/release/statsd-load"
WORK="$(mktemp -d /tmp/opsbro-statsd-bench.XXXXXX)"
PIDS=()
OLD_DEFAULT=$(sysctl -n net.core.rmem_default)
OLD_MAX=$(sysctl -n net.core.rmem_max)
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    sysctl -qw net.core.rmem_default="$OLD_DEFAULT" net.core.rmem_max="$OLD_MAX" || true
    rm -rf "$WORK"
}
trap cleanup EXIT
sysctl -qw net.core.rmem_default=16777216 net.core.rmem_max=16777216

printf 'statsd:\n  enabled: true\n  port: 18125\n  interval: 10s\ndns:\n  enabled: false\n' > "$WORK/agent.yml"
"$BIN" agent start --config "$WORK/agent.yml" --data-dir "$WORK/data" --bind 127.0.0.1 \
    --port 17603 --api-port 17703 --log-level warn >"$WORK/opsbro.log" 2>&1 &
PIDS+=($!)
OPSBRO_PID=${PIDS[-1]}
cat > "$WORK/etsy.js" <<CONF
{ port: 28125, address: "127.0.0.1", mgmt_address: "127.0.0.1", mgmt_port: 28126,
  flushInterval: 3600000, backends: [] }
CONF
node "$ETSY/node_modules/statsd/stats.js" "$WORK/etsy.js" >"$WORK/etsy.log" 2>&1 &
PIDS+=($!)
ETSY_PID=${PIDS[-1]}
"$BIN" --api 127.0.0.1:17703 agent wait-initialized --timeout 30 >/dev/null
sleep 1

received() { # label → lines received so far
    if [ "$1" = opsbro ]; then
        "$BIN" --api 127.0.0.1:17703 agent info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["metrics"]["statsd_lines"])'
    else
        python3 - <<'PY'
import re, socket, time
s = socket.create_connection(("127.0.0.1", 28126))
s.sendall(b"counters\n")
data = b""
s.settimeout(1)
try:
    while b"END" not in data:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        data += chunk
except socket.timeout:
    pass
m = re.search(rb"'?statsd\.metrics_received'?: (\d+)", data)
print(m.group(1).decode() if m else 0)
PY
    fi
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# label port pid lines-per-datagram rate → prints "loss% cpu%"; returns 1 when loss >= 0.1%
step() {
    local label=$1 port=$2 pid=$3 per=$4 rate=$5 before after sent t0 t1
    before=$(received "$label")
    t0=$(ticks "$pid")
    sent=$("$GEN" "127.0.0.1:$port" "$per" "$rate" "$DURATION" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["lines"], d["lines_per_sec"])')
    t1=$(ticks "$pid")
    sleep 1
    after=$(received "$label")
    python3 - "$label" "$per" "$rate" "$before" "$after" "$sent" "$t0" "$t1" "$DURATION" <<'PY' | tee -a "$WORK/results"
import sys
label, per, rate, before, after, sent, achieved, t0, t1, d = sys.argv[1:4] + [int(sys.argv[4]), int(sys.argv[5])] + sys.argv[6].split() + sys.argv[7:]
sent = int(sent); got = after - before
loss = 100.0 * (sent - got) / sent if sent else 100.0
cpu = (int(t1) - int(t0)) / float(d)
print(f"{label:7} {per:>2} lines/dgram  offered {int(rate):>9,}/s  sent {float(achieved):>11,.0f}/s  received {got:>11,}  loss {loss:7.3f}%  cpu {cpu:5.1f}%")
sys.exit(0 if loss < 0.1 else 1)
PY
}

for per in 20 1; do
    if [ "$per" = 20 ]; then
        RATES="250000 500000 750000 1000000 2000000 3000000 4000000 5000000 6000000 7000000 8000000 10000000"
    else
        RATES="30000 60000 80000 100000 150000 200000 300000 400000 500000 600000 800000 1000000 1200000"
    fi
    for label in etsy opsbro; do
        port=28125; pid=$ETSY_PID
        [ "$label" = opsbro ] && { port=18125; pid=$OPSBRO_PID; }
        best=0; fails=0
        for rate in $RATES; do
            if step "$label" "$port" "$pid" "$per" "$rate"; then
                sent=$(tail -1 "$WORK/results" | sed -E 's/.* sent +([0-9,]+)\/s.*/\1/; s/,//g')
                [ "$sent" -gt "$best" ] && best=$sent
                fails=0
            else
                fails=$((fails + 1))
            fi
            [ "$fails" -ge 2 ] && break
        done
        echo "== $label, $per lines per datagram: highest rate received with < 0.1% loss: $best lines/s" | tee -a "$WORK/results"
    done
done
echo
grep '^==' "$WORK/results"
