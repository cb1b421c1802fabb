#!/usr/bin/env bash
# graphite on loopback: opsbro's plaintext ingestion beside carbon-cache and its /render beside
# graphite-web (Debian graphite-carbon and graphite-web 1.1.8 under gunicorn), same machine, same
# run; see bench/graphite_bench.py for what is measured and how.
#
# Usage: bench/graphite_bench.sh [lines per server, default 4000000] [wrk seconds, default 10]
set -euo pipefail
# Agents started here never ask a cloud metadata service (that traffic would leave the machine).
export OPSBRO_HOSTING_DRIVER=none
cd "$(dirname "$0")/.."
for cmd in carbon-cache whisper-fetch graphite-manage gunicorn wrk; do
    command -v "$cmd" >/dev/null || {
        echo "missing $cmd: apt-get install graphite-carbon python3-whisper graphite-web gunicorn wrk" >&2
        exit 1
    }
done
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET/release/opsbro"
[ -x "$BIN" ] || cargo build --release --quiet -p opsbro-cli
exec python3 bench/graphite_bench.py "$BIN" "${1:-4000000}" "${2:-10}"
