#!/usr/bin/env bash
# Locks on Raft, opsbro beside a 3-member etcd (see raft_bench.py). Installs what it needs
# (Debian `etcd-server` and `etcd-client`), builds opsbro in release mode, then runs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null && command -v etcdctl >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client; }
python3 -c 'import msgpack' 2>/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-msgpack
cargo build --release -q -p opsbro-cli
python3 bench/raft_bench.py --opsbro "${CARGO_TARGET_DIR:-target}/release/opsbro" "$@"
