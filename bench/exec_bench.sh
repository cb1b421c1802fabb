#!/usr/bin/env bash
# Fleet-wide exec benchmark, opsbro beside `serf query` (see exec_bench.py). Installs what it
# needs (Debian `serf`, PyPI `msgpack`), builds opsbro in release mode, then runs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v serf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq serf; }
python3 -c 'import msgpack' 2>/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-msgpack
cargo build --release -q -p opsbro-cli
python3 bench/exec_bench.py --opsbro "${CARGO_TARGET_DIR:-target}/release/opsbro" "$@"
