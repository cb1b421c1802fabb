#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with only Rust installed: first what the tests
# need (system packages and a Python venv for the SMTP server, see .ci/install-deps.sh) — installed
# here when run as root, else the one command that installs them is printed — then
# `cargo test --workspace` with any arguments given (e.g. `./test.sh --locked`).
set -euo pipefail
cd "$(dirname "$0")"
if ! bash .ci/install-deps.sh --check 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        bash .ci/install-deps.sh
    else
        bash .ci/install-deps.sh --check || true
        echo "the tests need these first: run   sudo bash .ci/install-deps.sh   then ./test.sh again" >&2
        exit 1
    fi
fi
exec cargo test --workspace "$@"
