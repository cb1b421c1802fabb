#!/usr/bin/env bash
# Real-process membership benchmark, opsbro beside serf (see gossip_real.py). Installs what it
# needs (Debian `serf`, PyPI `msgpack`), builds opsbro in release mode, then runs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v serf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq serf; }
python3 -c 'import msgpack' 2>/dev/null || pip install -q msgpack
cargo build --release -q -p opsbro-cli
python3 bench/gossip_real.py --opsbro "${CARGO_TARGET_DIR:-target}/release/opsbro" "$@"
